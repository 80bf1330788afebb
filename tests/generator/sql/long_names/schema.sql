-- Names long enough that the generated code must wrap lines the way ruff format does.
CREATE TYPE a_rather_long_enumeration_type_name_for_testing AS ENUM ('first_value', 'second');
CREATE TABLE a_table_with_a_really_quite_long_name_indeed_yes (
    id bigint PRIMARY KEY,
    a_column_with_an_extremely_long_name_for_layout_purposes_only text,
    another_column_with_an_extremely_long_name_for_layout_testing jsonb,
    yet_another_fairly_long_column_name a_rather_long_enumeration_type_name_for_testing,
    the_list_of_enumeration_values_column a_rather_long_enumeration_type_name_for_testing[],
    some_inet_addresses_column_name inet[]
);
