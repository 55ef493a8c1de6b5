-- provisiond: tell the daemon when billing group membership changes.
--
-- Install in the BILLING database (PostgreSQL) and set in provisiond.toml:
--
--     [daemon]
--     notify_channel = "provisiond"
--
-- The daemon LISTENs on that channel and starts a pass within about a second
-- (daemon.debounce) instead of waiting for the next interval. The payload is only a
-- hint for the logs ("<table> <operation>"); every pass reads the whole query again, so
-- nothing is lost if a notification is. Statement-level triggers send one notification
-- per statement, and PostgreSQL folds identical notifications within a transaction into
-- one, so a bulk update costs one pass.
--
-- Adapt the table list to the tables your billing query reads. The schema below is
-- the one `provisiond demo` creates: accounts, groups, account_groups, ip_assignments,
-- radius_accounts. Re-running this file is safe.
--
-- Privileges: the role provisiond connects as needs only SELECT on the billing tables
-- (LISTEN needs no grant). Installing the triggers needs the tables' owner.

CREATE OR REPLACE FUNCTION provisiond_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('provisiond', TG_TABLE_NAME || ' ' || lower(TG_OP));
    RETURN NULL;
END;
$$;

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['accounts', 'groups', 'account_groups', 'ip_assignments',
                             'radius_accounts']
    LOOP
        IF to_regclass(t) IS NULL THEN
            RAISE NOTICE 'provisiond_notify: no table %, skipped', t;
            CONTINUE;
        END IF;
        EXECUTE format('DROP TRIGGER IF EXISTS provisiond_notify ON %I', t);
        EXECUTE format(
            'CREATE TRIGGER provisiond_notify '
            'AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON %I '
            'FOR EACH STATEMENT EXECUTE FUNCTION provisiond_notify()', t);
    END LOOP;
END;
$$;
