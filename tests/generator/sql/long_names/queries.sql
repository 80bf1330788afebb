-- name: InsertIntoTheTableWithTheReallyQuiteLongNameIndeed :one
INSERT INTO a_table_with_a_really_quite_long_name_indeed_yes (id, a_column_with_an_extremely_long_name_for_layout_purposes_only, another_column_with_an_extremely_long_name_for_layout_testing, yet_another_fairly_long_column_name, the_list_of_enumeration_values_column, some_inet_addresses_column_name)
VALUES ($1, $2, $3, $4, $5, $6) RETURNING *;

-- name: SelectSomeColumnsFromTheTableWithTheReallyLongName :many
SELECT a_column_with_an_extremely_long_name_for_layout_purposes_only, yet_another_fairly_long_column_name FROM a_table_with_a_really_quite_long_name_indeed_yes WHERE another_column_with_an_extremely_long_name_for_layout_testing = $1;

-- name: BatchGetTheRowsOfTheTableWithTheReallyQuiteLongName :batchmany
SELECT a_column_with_an_extremely_long_name_for_layout_purposes_only, yet_another_fairly_long_column_name FROM a_table_with_a_really_quite_long_name_indeed_yes WHERE id = $1;

-- name: BatchOneOfTheRowsOfTheTableWithTheReallyQuiteLongName :batchone
SELECT a_column_with_an_extremely_long_name_for_layout_purposes_only, yet_another_fairly_long_column_name FROM a_table_with_a_really_quite_long_name_indeed_yes WHERE id = $1;

-- name: CopyIntoTheTableWithTheReallyQuiteLongNameIndeedYes :copyfrom
INSERT INTO a_table_with_a_really_quite_long_name_indeed_yes (id, a_column_with_an_extremely_long_name_for_layout_purposes_only, another_column_with_an_extremely_long_name_for_layout_testing) VALUES ($1, $2, $3);

-- name: UpdateTheTableWithTheReallyQuiteLongNameIndeedYes :execresult
UPDATE a_table_with_a_really_quite_long_name_indeed_yes SET another_column_with_an_extremely_long_name_for_layout_testing = $1, yet_another_fairly_long_column_name = $2 WHERE id = $3;

-- name: ListTheEnumerationValuesOfEveryRowInTheLongTable :many
SELECT the_list_of_enumeration_values_column FROM a_table_with_a_really_quite_long_name_indeed_yes;

-- name: OneEnumerationValueOfTheLongTableRow :one
SELECT yet_another_fairly_long_column_name FROM a_table_with_a_really_quite_long_name_indeed_yes WHERE id = $1;
