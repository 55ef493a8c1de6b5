-- provisiond: tell the daemon which billing accounts changed.
--
-- Install in the BILLING database (PostgreSQL 10 or newer) and set in provisiond.toml:
--
--     [daemon]
--     notify_channel = "provisiond"
--
-- The daemon LISTENs on that channel. The triggers notify the channel that
-- provisiond_notify_channel() below returns: the one place to change it (then re-run this
-- file); it must be the same name as notify_channel. `provisiond check-config --connect`
-- says when the two differ. The payload is the ids of the accounts a statement
-- touched, separated by commas ("1042" or "1042,1043"); the daemon then runs a scoped
-- pass for those accounts only (billing read narrowed to them, their router entries,
-- RADIUS rows, CoA and leases), which takes well under a second even with 100,000
-- accounts. An empty payload, or any payload that is not a list of ids, means a full
-- pass. The interval passes go on regardless, so nothing is lost if a notification is.
--
-- One notification per statement: the triggers are statement-level and read the rows
-- the statement changed from its transition tables, so an UPDATE of 10,000 rows sends
-- one notification, not 10,000. A statement touching so many accounts that their ids
-- do not fit into one payload (PostgreSQL's limit is 8000 bytes) sends an empty payload:
-- a full pass. TRUNCATE, and any change to a table without an account column (here
-- `groups`: renaming a group moves all its members), also send an empty payload.
--
-- Adapt the table list to the tables your billing query reads: each entry is a table and
-- the column holding the account id (NULL: the table has none, every change means a full
-- pass). The schema below is the one `provisiond demo` creates. Re-running this file is
-- safe. You can also send a notification by hand:
-- SELECT pg_notify(provisiond_notify_channel(), '1042');
--
-- Privileges: the role provisiond connects as needs only SELECT on the billing tables
-- (LISTEN needs no grant). Installing the triggers needs the tables' owner.

-- The channel: the same name as daemon.notify_channel in provisiond.toml.
CREATE OR REPLACE FUNCTION provisiond_notify_channel() RETURNS text
LANGUAGE sql STABLE AS $$ SELECT 'provisiond'::text $$;

CREATE OR REPLACE FUNCTION provisiond_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    col text := TG_ARGV[0];
    ids text;
BEGIN
    IF TG_OP = 'TRUNCATE' OR col IS NULL OR col = '' THEN
        PERFORM pg_notify(provisiond_notify_channel(), '');
        RETURN NULL;
    END IF;
    IF TG_OP = 'INSERT' THEN
        EXECUTE format('SELECT string_agg(DISTINCT %I::text, '','') FROM provisiond_new', col)
            INTO ids;
    ELSIF TG_OP = 'DELETE' THEN
        EXECUTE format('SELECT string_agg(DISTINCT %I::text, '','') FROM provisiond_old', col)
            INTO ids;
    ELSE  -- UPDATE: the rows before and after (an account id may have changed too)
        EXECUTE format('SELECT string_agg(DISTINCT x::text, '','') FROM ('
                       'SELECT %1$I AS x FROM provisiond_new '
                       'UNION SELECT %1$I FROM provisiond_old) AS touched', col)
            INTO ids;
    END IF;
    IF ids IS NULL THEN
        RETURN NULL;  -- the statement touched no row
    END IF;
    IF length(ids) > 7900 THEN
        ids := '';  -- too many ids for one payload: a full pass
    END IF;
    PERFORM pg_notify(provisiond_notify_channel(), ids);
    RETURN NULL;
END;
$$;

DO $$
DECLARE
    t text;
    col text;
    pair text[];
BEGIN
    FOREACH pair SLICE 1 IN ARRAY ARRAY[
        ['accounts', 'id'],
        ['account_groups', 'account_id'],
        ['ip_assignments', 'account_id'],
        ['radius_accounts', 'account_id'],
        ['groups', NULL]
    ]
    LOOP
        t := pair[1];
        col := coalesce(pair[2], '');
        IF to_regclass(t) IS NULL THEN
            RAISE NOTICE 'provisiond_notify: no table %, skipped', t;
            CONTINUE;
        END IF;
        EXECUTE format('DROP TRIGGER IF EXISTS provisiond_notify ON %I', t);  -- older versions
        EXECUTE format('DROP TRIGGER IF EXISTS provisiond_notify_insert ON %I', t);
        EXECUTE format('DROP TRIGGER IF EXISTS provisiond_notify_update ON %I', t);
        EXECUTE format('DROP TRIGGER IF EXISTS provisiond_notify_delete ON %I', t);
        EXECUTE format('DROP TRIGGER IF EXISTS provisiond_notify_truncate ON %I', t);
        -- A trigger with transition tables takes one event: one trigger per event.
        EXECUTE format('CREATE TRIGGER provisiond_notify_insert AFTER INSERT ON %I '
                       'REFERENCING NEW TABLE AS provisiond_new '
                       'FOR EACH STATEMENT EXECUTE FUNCTION provisiond_notify(%L)', t, col);
        EXECUTE format('CREATE TRIGGER provisiond_notify_update AFTER UPDATE ON %I '
                       'REFERENCING NEW TABLE AS provisiond_new OLD TABLE AS provisiond_old '
                       'FOR EACH STATEMENT EXECUTE FUNCTION provisiond_notify(%L)', t, col);
        EXECUTE format('CREATE TRIGGER provisiond_notify_delete AFTER DELETE ON %I '
                       'REFERENCING OLD TABLE AS provisiond_old '
                       'FOR EACH STATEMENT EXECUTE FUNCTION provisiond_notify(%L)', t, col);
        EXECUTE format('CREATE TRIGGER provisiond_notify_truncate AFTER TRUNCATE ON %I '
                       'FOR EACH STATEMENT EXECUTE FUNCTION provisiond_notify(%L)', t, col);
    END LOOP;
END;
$$;
