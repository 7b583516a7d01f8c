"""``countersign_call_moved()``: lets a call's status UPDATE fail by itself when it matches
no row, so that it can go to the database with the transaction's COMMIT instead of alone
(``approvals.sql.move_call_later``). PostgreSQL only: elsewhere the UPDATE runs at once
and its row count is checked in Python."""

from django.db import migrations

# SQLSTATE "CS001" is Countersign's own (class "CS" is neither the SQL standard's nor
# PostgreSQL's); approvals.sql.NOT_MOVED names it.
CREATE = """
CREATE OR REPLACE FUNCTION countersign_call_moved(matched bigint, call_id uuid)
RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN
  IF matched <> 1 THEN
    RAISE EXCEPTION 'call % was not moved: it is no longer in a status (or under the fence) the move expected', call_id
      USING ERRCODE = 'CS001';
  END IF;
  RETURN matched;
END
$$
"""
DROP = "DROP FUNCTION IF EXISTS countersign_call_moved(bigint, uuid)"


def create(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE, params=None)  # its "%" are PL/pgSQL's, not parameters


def drop(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP, params=None)


class Migration(migrations.Migration):
    dependencies = [("approvals", "0010_slimmer_call_indexes")]

    operations = [migrations.RunPython(create, drop)]
