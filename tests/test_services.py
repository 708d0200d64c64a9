"""The database servers the tests start (tests/services.py) stay out of each other's
way: xdist's workers each start their own, on one machine, at any moment."""

import os
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import services


def test_a_mariadb_starting_beside_another_leaves_its_temporary_tables(mysql_url):
    # An Aria temporary table is a file in the server's tmpdir, as are the
    # on-disk tables of a query's sort or GROUP BY (the CI failure this guards).
    url = urlsplit(services.create_database(mysql_url, "temporary_tables"))
    client = subprocess.Popen(
        [
            *(services.mariadb_tool("mariadb"), "--no-defaults", "--protocol=TCP"),
            *("--host", url.hostname, "--port", str(url.port), "--user", url.username),
            *("--batch", "--skip-column-names", "--unbuffered", url.path.lstrip("/")),
        ],
        env={**os.environ, "MYSQL_PWD": url.password},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        client.stdin.write(
            "CREATE TEMPORARY TABLE kept (a INT) ENGINE=Aria;"
            " INSERT INTO kept VALUES (7); SELECT 'created';\n"
        )
        client.stdin.flush()
        assert client.stdout.readline().strip() == "created"
        with (
            tempfile.TemporaryDirectory(prefix="template-tests-mysql-") as workdir,
            services.mariadb(Path(workdir)),
        ):
            pass  # its start is what would delete them
        # Its rows stay readable through open descriptors; dropping it finds
        # its files gone, as the CI's query failed to delete its on-disk table.
        client.stdin.write("SELECT a FROM kept; DROP TEMPORARY TABLE kept;\n")
        output, errors = client.communicate(timeout=60)
    finally:
        client.kill()
    assert client.returncode == 0, errors
    assert output.strip() == "7"
