-- The test's own account of every key's slots, kept apart from the engine's.
--
-- After each statement that changes which tasks of a key hold a slot, the
-- triggers below recount that key's slot-holding rows with a query of their
-- own, and write the recount next to the engine's counter
-- (concurrency_keys.running) into key_slot_audit. The engine's counting
-- triggers are named tasks_{inserted,updated,deleted}_count_key_slots;
-- PostgreSQL fires the triggers of one event in the order of their names, so
-- these (tasks_zz_...) fire after them and see the counter already changed.
--
-- Before it recounts a key, the audit takes a transaction-level advisory lock
-- on it (keys locked in the order of their lock ids, so two audits never wait
-- for each other in a circle). Every other transaction that changes the key's
-- slots waits for that lock until this one commits, and then recounts with a
-- fresh query (READ COMMITTED: a new snapshot per statement), so it sees this
-- one's rows. The changes of a key are thus recounted one transaction after
-- the other, and the audit row of each transaction counts what was committed
-- when it committed: the audit sees every committed state of every key. Its
-- rows are written in the audited transaction: a statement that fails, or a
-- transaction that rolls back, leaves none.
--
-- With the engine's triggers on, the keys audited are exactly the keys whose
-- counter row the engine's trigger locked, in this same statement: whoever
-- holds a key's advisory lock holds its row lock too, so the audit makes
-- nobody wait who would not have waited anyway. With them off, the advisory
-- lock alone orders the audits.

CREATE TABLE key_slot_audit (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue text NOT NULL,
    key text NOT NULL,
    -- The recount: the key's rows holding a slot, as committed plus this transaction's.
    held integer NOT NULL,
    -- The engine's counter for the key, as this transaction leaves it.
    counter integer,
    at timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- What the recount reads: a key's slot-holding rows. Only those rows are in it,
-- so it stays as small as the number of busy slots.
CREATE INDEX tasks_audit_key_slot_held_idx ON tasks (queue, concurrency_key) WHERE key_slot_held;

CREATE FUNCTION audit_key_slots() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    touched jsonb;
    lock_ids record;
BEGIN
    -- The keys whose slots this statement changed: the same net difference,
    -- per key, that count_key_slots computes (each branch reads only the
    -- transition tables its operation has).
    IF TG_OP = 'INSERT' THEN
        SELECT jsonb_agg(DISTINCT jsonb_build_object('queue', queue, 'key', concurrency_key))
        INTO touched
        FROM new_rows WHERE key_slot_held;
    ELSIF TG_OP = 'DELETE' THEN
        SELECT jsonb_agg(DISTINCT jsonb_build_object('queue', queue, 'key', concurrency_key))
        INTO touched
        FROM old_rows WHERE key_slot_held;
    ELSE
        SELECT jsonb_agg(jsonb_build_object('queue', queue, 'key', key))
        INTO touched
        FROM (
            SELECT queue, key
            FROM (
                SELECT queue, concurrency_key AS key, 1 AS delta
                FROM new_rows WHERE key_slot_held
                UNION ALL
                SELECT queue, concurrency_key, -1 FROM old_rows WHERE key_slot_held
            ) AS held
            GROUP BY queue, key
            HAVING sum(delta) <> 0
        ) AS net;
    END IF;
    IF touched IS NULL THEN
        RETURN NULL;  -- no key's slots changed
    END IF;

    -- One at a time, in order (a loop: the order of a query's output is not
    -- the order in which its functions run).
    FOR lock_ids IN
        SELECT DISTINCT hashtext(t.queue) AS queue_lock, hashtext(t.key) AS key_lock
        FROM jsonb_to_recordset(touched) AS t(queue text, key text)
        ORDER BY 1, 2
    LOOP
        PERFORM pg_advisory_xact_lock(lock_ids.queue_lock, lock_ids.key_lock);
    END LOOP;

    -- A statement of its own, after the locks: its snapshot sees every
    -- transaction that changed these keys and committed while we waited.
    INSERT INTO key_slot_audit (queue, key, held, counter)
    SELECT t.queue, t.key,
        (SELECT count(*) FROM tasks
         WHERE tasks.queue = t.queue AND tasks.concurrency_key = t.key AND tasks.key_slot_held),
        (SELECT running FROM concurrency_keys AS k WHERE k.queue = t.queue AND k.key = t.key)
    FROM jsonb_to_recordset(touched) AS t(queue text, key text)
    ORDER BY t.queue, t.key;
    RETURN NULL;
END;
$$;

CREATE TRIGGER tasks_zz_audit_inserted_key_slots
    AFTER INSERT ON tasks
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT
    EXECUTE FUNCTION audit_key_slots();

CREATE TRIGGER tasks_zz_audit_updated_key_slots
    AFTER UPDATE ON tasks
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT
    EXECUTE FUNCTION audit_key_slots();

CREATE TRIGGER tasks_zz_audit_deleted_key_slots
    AFTER DELETE ON tasks
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT
    EXECUTE FUNCTION audit_key_slots();
