"""python tests/bench/mysql_drivers.py MYSQL_URL: the CPU each asyncio MySQL
driver spends on a read, asyncmy against aiomysql, in one run (the choice of
core/database_servers/mysql.py).

Run it with an interpreter that has asyncmy, aiomysql and uvloop (a scratch
virtualenv: the service depends on one driver only) against a database it may
write a table into, e.g. mysql://root:pw@127.0.0.1:3306/bench. Each driver reads
one row, then 20 rows, N times, four reads at once on a pool of four, with
uvloop; the rounds interleave the drivers, since these machines are noisy.
"""

import asyncio
import sys
import time
from urllib.parse import urlsplit

import uvloop

N = 3000
ROUNDS = 3
ONE_ROW = "SELECT id, name, price, created, active FROM item WHERE id = %s"
TWENTY_ROWS = "SELECT id, name, price, created, active FROM item ORDER BY id LIMIT 20"


def connect_kwargs(url: str) -> dict:
    parts = urlsplit(url)
    return {
        "host": parts.hostname,
        "port": parts.port or 3306,
        "user": parts.username,
        "password": parts.password or "",
        "db": parts.path.lstrip("/"),
        "autocommit": True,
    }


async def create_pool(driver: str, kwargs: dict):
    if driver == "asyncmy":
        import asyncmy

        return await asyncmy.create_pool(minsize=1, maxsize=4, **kwargs)
    import aiomysql

    return await aiomysql.create_pool(minsize=1, maxsize=4, **kwargs)


async def seed(kwargs: dict) -> None:
    pool = await create_pool("aiomysql", kwargs)
    async with pool.acquire() as connection, connection.cursor() as cursor:
        await cursor.execute(
            "CREATE TABLE IF NOT EXISTS item (id BIGINT PRIMARY KEY AUTO_INCREMENT,"
            " name VARCHAR(100), price DECIMAL(10,2), created DATETIME(6), active BOOL)"
        )
        await cursor.execute("DELETE FROM item")
        await cursor.executemany(
            "INSERT INTO item (name, price, created, active)"
            " VALUES (%s, %s, NOW(6), %s)",
            [(f"item{i}", round(i / 3, 2), i % 2) for i in range(1, 51)],
        )
    pool.close()
    await pool.wait_closed()


async def measure(driver: str, kwargs: dict, sql: str) -> float:
    """CPU seconds per read."""
    pool = await create_pool(driver, kwargs)

    async def read(i: int):
        async with pool.acquire() as connection, connection.cursor() as cursor:
            await cursor.execute(sql, (i % 50 + 1,) if "%s" in sql else None)
            return await cursor.fetchall()

    for i in range(200):  # warm: connections open, code paths hot
        await read(i)
    started = time.process_time()
    for start in range(0, N, 4):
        await asyncio.gather(*(read(i) for i in range(start, start + 4)))
    spent = time.process_time() - started
    pool.close()
    await pool.wait_closed()
    return spent / N


def main() -> None:
    kwargs = connect_kwargs(sys.argv[1])
    uvloop.run(seed(kwargs))
    for name, sql in (("1 row", ONE_ROW), ("20 rows", TWENTY_ROWS)):
        for _ in range(ROUNDS):
            cells = {
                driver: uvloop.run(measure(driver, kwargs, sql))
                for driver in ("asyncmy", "aiomysql")
            }
            print(
                f"{name}: "
                + ", ".join(f"{d} {c * 1e6:.0f} us CPU/read" for d, c in cells.items())
                + f" (aiomysql/asyncmy {cells['aiomysql'] / cells['asyncmy']:.2f})"
            )


if __name__ == "__main__":
    main()
