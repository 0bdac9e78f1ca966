#!/usr/bin/env bash
# Install (Debian's package) and start a PostgreSQL server on 127.0.0.1:5432 with the test database that
# tests/conftest.py expects. Safe to run again: it only creates what is missing.
set -euo pipefail
if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    apt-get install -y -q postgresql >/dev/null
fi
version=$(ls /usr/lib/postgresql | sort -n | tail -1)
if ! pg_lsclusters -h | grep -q "^$version main"; then
    pg_createcluster "$version" main >/dev/null
fi
pg_ctlcluster "$version" main start 2>/dev/null || true
for _ in $(seq 1 30); do
    pg_isready -h 127.0.0.1 -p 5432 -q && break
    sleep 1
done
su postgres -c "psql -tAc \"SELECT 1 FROM pg_roles WHERE rolname='thresher'\"" | grep -q 1 ||
    su postgres -c "psql -qc \"CREATE ROLE thresher LOGIN PASSWORD 'thresher'\""
su postgres -c "psql -tAc \"SELECT 1 FROM pg_database WHERE datname='thresher_test'\"" | grep -q 1 ||
    su postgres -c "createdb -O thresher thresher_test"
echo "PostgreSQL $version ready on 127.0.0.1:5432"
