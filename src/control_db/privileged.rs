//! The narrow doors through which the API role changes tenant roles. The API role holds no
//! CREATEROLE: on PostgreSQL 15 that attribute lets a role grant itself any predefined role
//! (`pg_execute_server_program` is a shell as the server's OS user), and on 16+ it still means
//! ADMIN over every role it makes. Instead, superuser-owned SECURITY DEFINER functions in the
//! control DB's `pgaas_priv` schema (which only the superuser may change) make, change and drop
//! roles that are tenants' and nothing else: tenant-named, in the tenant group, with a tenant's
//! fixed attributes, their passwords only ever SCRAM verifiers. Only the API role may call them.
//!
//! The statements that call them live here too, so the tenant layer never spells role DDL.

use sqlx::{Executor, PgConnection};

use super::ControlDbError;
use crate::{
    model::TENANT_GROUP,
    pg::quote::{quote_ident, quote_literal},
};

/// Every function the API role may call, with its argument types (for GRANT and REVOKE).
const GRANTED: [&str; 6] = [
    "pgaas_priv.tenant_secrets()",
    "pgaas_priv.create_tenant_role(text, text, integer, text)",
    "pgaas_priv.set_tenant_connection_limit(text, integer)",
    "pgaas_priv.set_tenant_password(text, text)",
    "pgaas_priv.reset_tenant_setting(text, text, text)",
    "pgaas_priv.drop_tenant_role(text, text)",
];

/// Helpers the functions above call (as the superuser); nobody else may.
const PRIVATE: [&str; 3] = [
    "pgaas_priv.check_tenant_name(text)",
    "pgaas_priv.check_tenant_role(text)",
    "pgaas_priv.check_verifier(text)",
];

/// The functions' definitions. `@GROUP@` and `@API@` stand for the quoted literals of the tenant
/// group and the API role; the names are fixed at bootstrap so no caller can choose them.
const FUNCTIONS: &str = r#"
CREATE OR REPLACE FUNCTION pgaas_priv.check_tenant_name(p_role text) RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog AS $fn$
BEGIN
  IF p_role IS NULL OR p_role !~ '^(tenant|user)_[0-9a-f]{8,32}$' THEN
    RAISE EXCEPTION 'pgaas: % is not a tenant role name', quote_literal(coalesce(p_role, 'NULL'))
      USING ERRCODE = 'insufficient_privilege';
  END IF;
END
$fn$;

CREATE OR REPLACE FUNCTION pgaas_priv.check_tenant_role(p_role text) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $fn$
BEGIN
  PERFORM pgaas_priv.check_tenant_name(p_role);
  IF NOT EXISTS (
    SELECT 1 FROM pg_roles r
    JOIN pg_auth_members m ON m.member = r.oid
    JOIN pg_roles g ON g.oid = m.roleid AND g.rolname = @GROUP@
    WHERE r.rolname = p_role AND r.rolcanlogin
      AND NOT (r.rolsuper OR r.rolcreaterole OR r.rolcreatedb OR r.rolreplication OR r.rolbypassrls)
  ) THEN
    RAISE EXCEPTION 'pgaas: role % is not a tenant role (a login role of group %, with no privilege beyond a tenant''s)',
      quote_ident(p_role), @GROUP@
      USING ERRCODE = 'insufficient_privilege';
  END IF;
END
$fn$;

CREATE OR REPLACE FUNCTION pgaas_priv.check_verifier(p_verifier text) RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog AS $fn$
BEGIN
  -- Anything else, PostgreSQL would take for a plaintext password and hash itself.
  IF p_verifier IS NULL OR p_verifier !~
     '^SCRAM-SHA-256\$[1-9][0-9]{0,9}:[A-Za-z0-9+/]+={0,2}\$[A-Za-z0-9+/]+={0,2}:[A-Za-z0-9+/]+={0,2}$' THEN
    RAISE EXCEPTION 'pgaas: a tenant password must be given as a SCRAM-SHA-256 verifier'
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
END
$fn$;

CREATE OR REPLACE FUNCTION pgaas_priv.create_tenant_role(p_role text, p_verifier text, p_limit integer, p_comment text)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $fn$
BEGIN
  PERFORM pgaas_priv.check_tenant_name(p_role);
  PERFORM pgaas_priv.check_verifier(p_verifier);
  IF p_limit IS NULL OR p_limit < 1 THEN
    RAISE EXCEPTION 'pgaas: a tenant role''s connection limit must be at least 1'
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF p_comment IS NULL OR p_comment !~
     '^pgaas tenant [0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' THEN
    RAISE EXCEPTION 'pgaas: the ownership mark must be ''pgaas tenant <uuid>'''
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  EXECUTE format('CREATE ROLE %I LOGIN INHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION '
                 'NOBYPASSRLS CONNECTION LIMIT %s PASSWORD %L IN ROLE %I',
                 p_role, p_limit, p_verifier, @GROUP@);
  EXECUTE format('COMMENT ON ROLE %I IS %L', p_role, p_comment);
  -- The API creates the tenant's database with this owner, and drops it later.
  EXECUTE format('GRANT %I TO %I', p_role, @API@);
  IF (SELECT rolpassword FROM pg_authid WHERE rolname = p_role) IS DISTINCT FROM p_verifier THEN
    RAISE EXCEPTION 'pgaas: the verifier was not stored as given' USING ERRCODE = 'invalid_parameter_value';
  END IF;
END
$fn$;

CREATE OR REPLACE FUNCTION pgaas_priv.set_tenant_connection_limit(p_role text, p_limit integer)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $fn$
BEGIN
  PERFORM pgaas_priv.check_tenant_role(p_role);
  IF p_limit IS NULL OR p_limit < 1 THEN
    RAISE EXCEPTION 'pgaas: a tenant role''s connection limit must be at least 1'
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  EXECUTE format('ALTER ROLE %I CONNECTION LIMIT %s', p_role, p_limit);
END
$fn$;

CREATE OR REPLACE FUNCTION pgaas_priv.set_tenant_password(p_role text, p_verifier text)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $fn$
BEGIN
  PERFORM pgaas_priv.check_tenant_role(p_role);
  PERFORM pgaas_priv.check_verifier(p_verifier);
  EXECUTE format('ALTER ROLE %I PASSWORD %L', p_role, p_verifier);
  IF (SELECT rolpassword FROM pg_authid WHERE rolname = p_role) IS DISTINCT FROM p_verifier THEN
    RAISE EXCEPTION 'pgaas: the verifier was not stored as given' USING ERRCODE = 'invalid_parameter_value';
  END IF;
END
$fn$;

CREATE OR REPLACE FUNCTION pgaas_priv.reset_tenant_setting(p_role text, p_database text, p_setting text)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $fn$
DECLARE
  setting text;
BEGIN
  PERFORM pgaas_priv.check_tenant_role(p_role);
  IF p_setting IS NULL OR p_setting !~ '^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$' THEN
    RAISE EXCEPTION 'pgaas: % is not a setting name', quote_literal(coalesce(p_setting, 'NULL'))
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  setting := array_to_string(ARRAY(SELECT quote_ident(lower(part))
                                   FROM unnest(string_to_array(p_setting, '.')) AS part), '.');
  IF p_database IS NULL THEN
    EXECUTE format('ALTER ROLE %I RESET %s', p_role, setting);
  ELSE
    EXECUTE format('ALTER ROLE %I IN DATABASE %I RESET %s', p_role, p_database, setting);
  END IF;
END
$fn$;

CREATE OR REPLACE FUNCTION pgaas_priv.drop_tenant_role(p_role text, p_comment text)
RETURNS boolean LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $fn$
DECLARE
  mark text;
BEGIN
  PERFORM pgaas_priv.check_tenant_name(p_role);
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = p_role) THEN
    RETURN false;
  END IF;
  PERFORM pgaas_priv.check_tenant_role(p_role);
  SELECT shobj_description(oid, 'pg_authid') INTO mark FROM pg_roles WHERE rolname = p_role;
  IF p_comment IS NULL OR mark IS DISTINCT FROM p_comment THEN
    RAISE EXCEPTION 'pgaas: role % does not carry the ownership mark %; left in place',
      quote_ident(p_role), quote_literal(coalesce(p_comment, 'NULL'))
      USING ERRCODE = 'insufficient_privilege';
  END IF;
  EXECUTE format('DROP ROLE %I', p_role);
  RETURN true;
END
$fn$;
"#;

/// The statements (run as the superuser in the control DB, after `pgaas_priv` exists) that
/// (re)define the functions and leave EXECUTE on the callable ones to the API role alone.
pub(super) fn function_statements(api: &str) -> Result<Vec<String>, ControlDbError> {
    let api_q = quote_ident(api)?;
    let functions = FUNCTIONS
        .replace("@GROUP@", &quote_literal(TENANT_GROUP)?)
        .replace("@API@", &quote_literal(api)?);
    let mut stmts = vec![functions];
    for f in PRIVATE {
        stmts.push(format!("REVOKE ALL ON FUNCTION {f} FROM PUBLIC"));
        stmts.push(format!("REVOKE ALL ON FUNCTION {f} FROM {api_q}"));
    }
    for f in GRANTED {
        stmts.push(format!("REVOKE ALL ON FUNCTION {f} FROM PUBLIC"));
        stmts.push(format!("GRANT EXECUTE ON FUNCTION {f} TO {api_q}"));
    }
    Ok(stmts)
}

/// Take back what earlier releases gave the API role: CREATEROLE, and ADMIN (with membership)
/// on the tenant group. On PostgreSQL 16+ a grant depends on its grantor's ADMIN option, and a
/// CREATEROLE role was given ADMIN on every role it made: the grants the API made are made
/// again by the superuser and the API's are withdrawn, then its ADMIN options go. Idempotent.
pub(super) async fn retire_api_privileges(
    admin: &mut PgConnection,
    api: &str,
    version: i32,
) -> Result<(), ControlDbError> {
    let api_q = quote_ident(api)?;
    let api_lit = quote_literal(api)?;
    let group_lit = quote_literal(TENANT_GROUP)?;
    admin
        .execute(format!("ALTER ROLE {api_q} NOCREATEROLE").as_str())
        .await?;
    let sql = if version >= 160000 {
        format!(
            r#"DO $do$
DECLARE
  api oid := (SELECT oid FROM pg_roles WHERE rolname = {api_lit});
  g record;
BEGIN
  FOR g IN SELECT r.rolname AS role, mr.rolname AS member, m.inherit_option, m.set_option
           FROM pg_auth_members m
           JOIN pg_roles r ON r.oid = m.roleid JOIN pg_roles mr ON mr.oid = m.member
           WHERE m.grantor = api AND NOT (m.member = api AND r.rolname = {group_lit})
  LOOP
    EXECUTE format('GRANT %I TO %I WITH INHERIT %s, SET %s', g.role, g.member, g.inherit_option, g.set_option);
    EXECUTE format('REVOKE %I FROM %I GRANTED BY %I', g.role, g.member, {api_lit});
  END LOOP;
  FOR g IN SELECT r.rolname AS role, gr.rolname AS grantor, r.rolname = {group_lit} AS is_group
           FROM pg_auth_members m
           JOIN pg_roles r ON r.oid = m.roleid JOIN pg_roles gr ON gr.oid = m.grantor
           WHERE m.member = api AND (m.admin_option OR r.rolname = {group_lit})
  LOOP
    IF g.is_group THEN
      EXECUTE format('REVOKE %I FROM %I GRANTED BY %I', g.role, {api_lit}, g.grantor);
    ELSE
      EXECUTE format('REVOKE ADMIN OPTION FOR %I FROM %I GRANTED BY %I', g.role, {api_lit}, g.grantor);
    END IF;
  END LOOP;
END
$do$"#
        )
    } else {
        format!(
            r#"DO $do$
BEGIN
  IF pg_has_role({api_lit}, {group_lit}, 'MEMBER') AND EXISTS (
    SELECT 1 FROM pg_auth_members m
    WHERE m.member = (SELECT oid FROM pg_roles WHERE rolname = {api_lit})
      AND m.roleid = (SELECT oid FROM pg_roles WHERE rolname = {group_lit})
  ) THEN
    EXECUTE format('REVOKE %I FROM %I', {group_lit}, {api_lit});
  END IF;
END
$do$"#
        )
    };
    admin.execute(sql.as_str()).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_function_defined_is_granted_or_kept_private() {
        let stmts = function_statements("pgaas_api").unwrap();
        let defined = stmts[0].matches("CREATE OR REPLACE FUNCTION").count();
        assert_eq!(defined + 1, GRANTED.len() + PRIVATE.len());
        for f in GRANTED.iter().chain(PRIVATE.iter()).skip(1) {
            let name = f.split('(').next().unwrap();
            assert!(stmts[0].contains(&format!("FUNCTION {name}(")), "{name}");
        }
        assert!(!stmts[0].contains('@'), "a placeholder was left");
        assert!(stmts.iter().any(|s| s
            == "GRANT EXECUTE ON FUNCTION pgaas_priv.drop_tenant_role(text, text) TO \"pgaas_api\""));
    }
}
