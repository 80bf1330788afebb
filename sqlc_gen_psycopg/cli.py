"""The `sqlc-gen-psycopg` executable: sqlc's process-plugin protocol.

sqlc runs the plugin with the argument `/plugin.CodegenService/Generate`, writes
the GenerateRequest as JSON to stdin, and reads the response as JSON from stdout:
`{"files": [{"name": ..., "contents": <base64>}]}`. sqlc shows stderr only when
the plugin exits non-zero, so every problem ends in a message and exit status 1.
"""

import base64
import json
import sys

from sqlc_gen_psycopg.errors import GenerationError
from sqlc_gen_psycopg.generate import generate
from sqlc_gen_psycopg.request import parse_request

_METHOD = "/plugin.CodegenService/Generate"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] != _METHOD:
        print(
            f"sqlc-gen-psycopg: unknown method {args[0]!r}; sqlc calls {_METHOD}", file=sys.stderr
        )
        return 2
    try:
        files = generate(parse_request(sys.stdin.buffer.read()))
    except GenerationError as error:
        print(f"sqlc-gen-psycopg: {error}", file=sys.stderr)
        return 1
    response = {
        "files": [
            {"name": name, "contents": base64.b64encode(text.encode()).decode("ascii")}
            for name, text in sorted(files.items())
        ]
    }
    sys.stdout.write(json.dumps(response))
    return 0
