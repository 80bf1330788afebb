-- name: InsertSample :one
-- Insert one of everything; past four parameters they come in one Params object.
INSERT INTO samples (
    small, regular, big, single, double, exact, cash, flag, body, short, fixed, raw,
    day, clock, zoned_clock, moment, zoned_moment, duration, identifier, address,
    network, hardware, document, binary_document, feeling, numbers, grid, words,
    feelings, feeling_grid, documents, span, period, location
) VALUES (
    $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18,
    $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29, $30, $31, $32, $33, $34
)
RETURNING *;

-- name: GetSample :one
-- Fetch a sample by id.
SELECT * FROM samples WHERE id = sqlc.arg(id);

-- name: ListSamplesByFeeling :many
SELECT id, feeling, feelings FROM samples
WHERE feeling = ANY(sqlc.arg(feelings)::mood[])
ORDER BY id;

-- name: CountSamples :one
SELECT count(*) AS total FROM samples;

-- name: SetFeeling :execrows
UPDATE samples SET feeling = sqlc.narg(feeling) WHERE id = ANY(sqlc.arg(ids)::bigint[]);

-- name: TouchSamples :execresult
UPDATE samples SET flag = true WHERE flag IS NOT TRUE;

-- name: DeleteSample :exec
DELETE FROM samples WHERE id = $1;

-- name: CreateEvent :one
INSERT INTO events ("from", type, input, sample_id)
VALUES (sqlc.arg('from'), sqlc.arg(type), sqlc.arg(input), sqlc.narg(sample_id))
RETURNING *;

-- name: CopyEvents :copyfrom
INSERT INTO events ("from", type, input, feeling) VALUES ($1, $2, $3, $4);

-- name: FindEvents :many
-- A NULL type matches every event: one named parameter used twice.
SELECT * FROM events
WHERE sqlc.narg(type)::text IS NULL OR type = sqlc.narg(type)
ORDER BY id;

-- name: RenameEvents :batchexec
UPDATE events SET "from" = sqlc.arg(new_from) WHERE id = sqlc.arg(id);

-- name: GetEventInputs :batchone
SELECT id, input FROM events WHERE id = $1;

-- name: ListEventsOfType :batchmany
SELECT id FROM events WHERE type = $1 ORDER BY id;

-- name: EventsWithSamples :many
SELECT sqlc.embed(events), sqlc.embed(samples), samples.feeling AS sample_feeling
FROM events JOIN samples ON samples.id = events.sample_id
ORDER BY events.id;

-- name: Placeholders :one
-- '%' and '$1' inside literals are not placeholders, and a parameter may repeat.
SELECT
    '100%' AS percent,
    '$1' AS dollar_literal,
    $$ $2 $$ AS dollar_quoted,
    sqlc.arg(word)::text || sqlc.arg(word)::text AS doubled,
    1 + 1;

-- name: ListEventFeelings :many
-- One column: a list of values, not of one-field Row classes.
SELECT feeling FROM events ORDER BY id;

-- name: GetSampleFeeling :one
-- One nullable column: `None` is both "no row" and "NULL".
SELECT feeling FROM samples WHERE id = $1;
