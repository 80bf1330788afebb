-- name: InsertGadget :one
INSERT INTO gadgets (
    uuid, datetime, date, models, json, schema, copy, dict, validate, model_config,
    model_fields, letter
) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
RETURNING *;

-- name: Uuid :one
-- Named like the uuid module.
SELECT uuid FROM gadgets WHERE id = $1;

-- name: Datetime :many
-- Named like the datetime module, with fields named like modules.
SELECT datetime, uuid, date FROM gadgets ORDER BY id;

-- name: Models :one
-- Named like the models module.
SELECT models, letter FROM gadgets WHERE id = $1;

-- name: SetGadgetJson :execrows
UPDATE gadgets SET json = sqlc.narg(json) WHERE id = sqlc.arg(id);

-- name: CopyUsers :copyfrom
-- Named parameters: COPY must still name the table's columns.
INSERT INTO user_data (id, name) VALUES (sqlc.arg('id_param'), sqlc.arg('name_param'));

-- name: UsersByIds :many
SELECT id, name FROM user_data WHERE id = ANY(sqlc.slice('ids')) ORDER BY id;

-- name: UserNamesWithTabs :many
-- Indented with spaces and a tab on one line (ruff's E101).
SELECT name
FROM user_data
  	WHERE id > 0
    ORDER BY id;

-- name: Sleep :one
-- pg_sleep returns void.
SELECT pg_sleep(0);
