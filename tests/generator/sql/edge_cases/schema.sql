-- Names and shapes that once produced broken code: one case per bug, each run by
-- tests/generator/test_edge_cases.py.

-- Members O and I are names ruff's E741 flags as ambiguous.
CREATE TYPE letter AS ENUM ('o', 'i', 'x');

-- Columns named like the modules the generated code uses, and like pydantic.BaseModel's
-- attributes.
CREATE TABLE gadgets (
    id bigserial PRIMARY KEY,
    uuid uuid NOT NULL,
    datetime timestamptz NOT NULL,
    date date NOT NULL,
    models text,
    json jsonb,
    schema text,
    copy text,
    dict text,
    validate text,
    model_config text,
    model_fields text,
    letter letter
);

-- A table whose last column was dropped has no columns left.
CREATE TABLE emptied (gone integer);
ALTER TABLE emptied DROP COLUMN IF EXISTS gone;

CREATE TABLE user_data (id integer NOT NULL, name text NOT NULL);
