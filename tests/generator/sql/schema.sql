-- The generator's test fixture: every type and command sqlc-gen-psycopg supports.

CREATE TYPE mood AS ENUM ('sad', 'ok', 'very happy', 'a,b', 'say "hi"');

COMMENT ON TYPE mood IS 'How a sample feels.';

-- One column per PostgreSQL type the plugin maps; all nullable, so NULL round-trips too.
CREATE TABLE samples (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    small smallint,
    regular integer,
    big bigint,
    single real,
    double double precision,
    exact numeric(12, 3),
    cash money,
    flag boolean,
    body text,
    short varchar(10),
    fixed char(3),
    raw bytea,
    day date,
    clock time,
    zoned_clock timetz,
    moment timestamp,
    zoned_moment timestamptz,
    duration interval,
    identifier uuid,
    address inet,
    network cidr,
    hardware macaddr,
    document json,
    binary_document jsonb,
    feeling mood,
    numbers integer[],
    grid integer[][],
    words text[],
    feelings mood[],
    feeling_grid mood[][],
    documents jsonb[],
    span int4range,
    period tstzrange,
    location point
);

COMMENT ON TABLE samples IS 'A row holding one value of every type.';
COMMENT ON COLUMN samples.exact IS 'numeric loads as decimal.Decimal.';

-- Column names that are Python keywords and builtins.
CREATE TABLE events (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    "from" text NOT NULL,
    type text NOT NULL,
    input jsonb NOT NULL,
    feeling mood NOT NULL DEFAULT 'ok',
    sample_id bigint REFERENCES samples (id)
);
