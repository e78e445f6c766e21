# Sourced by scripts/test and scripts/bench-ingest: starts a throwaway PostgreSQL cluster
# from Debian's postgresql (installed when missing and running as root): initdb in a temp
# dir (as the postgres user when root: initdb refuses root), a free loopback port.
# Usage: throwaway_pg [extra postgres -c options]; sets PG_URL, PG_BIN and PG_STOP (a
# command that stops and removes it).
throwaway_pg() {
  PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
  if [ -z "$PG_BIN" ] || [ ! -x "$PG_BIN/initdb" ]; then
    if [ "$(id -u)" = 0 ]; then
      echo "installing Debian's postgresql"
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
      PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
    else
      echo "error: needs postgresql (sudo apt-get install postgresql) or a database URL" >&2
      return 1
    fi
  fi
  local dir port as_pg=()
  dir=$(mktemp -d)
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  if [ "$(id -u)" = 0 ]; then
    chown postgres "$dir"
    as_pg=(runuser -u postgres --)
  fi
  "${as_pg[@]}" "$PG_BIN/initdb" -D "$dir/data" -U postgres -A trust >/dev/null
  "${as_pg[@]}" "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/log" -w \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $dir $*" start >/dev/null
  PG_URL="postgresql://postgres@127.0.0.1:$port/postgres"
  PG_STOP="${as_pg[*]} $PG_BIN/pg_ctl -D $dir/data -m immediate stop >/dev/null; rm -rf $dir"
}
