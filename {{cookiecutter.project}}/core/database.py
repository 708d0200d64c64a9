"""Times every database query and counts the failed ones, async ORM included.

The async ORM runs its queries in a thread through the same connection objects,
so one execute wrapper per connection sees them all. Django opens connections
again and again (per request, or from the pool), and connection_created fires
each time: the wrapper is added once per connection object.
"""

import time

from core import metrics


class QueryMetrics:
    def __init__(self, alias: str):
        self.alias = alias

    def __call__(self, execute, sql, params, many, context):
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        except Exception as exc:
            metrics.DB_ERRORS.labels(self.alias, type(exc).__name__).inc()
            raise
        finally:
            metrics.DB_QUERY_DURATION.labels(
                self.alias, metrics.operation_label(sql)
            ).observe(time.perf_counter() - started)


def instrument(sender, connection, **kwargs) -> None:
    if not any(isinstance(w, QueryMetrics) for w in connection.execute_wrappers):
        connection.execute_wrappers.append(QueryMetrics(connection.alias))
