"""Allow ``python -m sqlc_gen_psycopg`` as well as the console script."""

from sqlc_gen_psycopg.cli import main

raise SystemExit(main())
