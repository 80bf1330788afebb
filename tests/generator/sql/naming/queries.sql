-- name: GetPerson :one
SELECT * FROM other.people WHERE id = $1;

-- name: PeopleByMood :many
SELECT id, mood FROM other.people WHERE mood = sqlc.arg(mood);

-- name: SetState :exec
UPDATE statuses SET state = $1 WHERE code = $2;

-- name: ListAddresses :many
SELECT * FROM addresses WHERE ip << sqlc.arg(network)::cidr;
