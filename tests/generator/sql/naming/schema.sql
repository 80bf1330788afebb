-- Naming cases: a second schema, plural table names, awkward enum labels.
CREATE SCHEMA other;

CREATE TYPE other.mood AS ENUM ('sad', 'happy');

CREATE TYPE job_state AS ENUM ('pending', 'in-progress', 'done', '2fa', 'class', 'in progress');

CREATE TABLE other.people (
    id serial PRIMARY KEY,
    mood other.mood,
    profile jsonb NOT NULL,
    home text,
    score numeric
);

CREATE TABLE statuses (code text PRIMARY KEY, state job_state NOT NULL);

CREATE TABLE categories (id integer PRIMARY KEY);

CREATE TABLE addresses (id integer PRIMARY KEY, ip inet NOT NULL, previous inet[]);

CREATE TABLE data (id integer PRIMARY KEY);

CREATE TABLE children (id integer PRIMARY KEY);
