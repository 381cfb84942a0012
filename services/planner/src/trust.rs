//! Decisions from verified principals: who asked for a plan, who may override the
//! policy gate, and the two-person rule on approvals.
//!
//! With `TORONTO_AUTH=required` every task and decision reaching the planner carries a
//! verified [`Caller`]; the names in the payload (`by`, `role`) are display text only.
//! Without one (`off`, or `permissive` with a refused signature) the planner falls
//! back to the payload's names, as it did before signatures existed.

use toronto_protocol::auth::Role;
use toronto_protocol::tasks::{Plan, PlanTask};
use toronto_runtime::auth::{Caller, Refusal};

/// The role name a verified admin's override is recorded with.
pub const VERIFIED_ADMIN_ROLE: &str = "admin";

/// Checks a task's policy override against the verified caller and writes the
/// caller into it: only a verified admin may override, and only with a reason.
pub fn check_override(task: &mut PlanTask, caller: Option<&Caller>) -> Result<(), Refusal> {
    let PlanTask::Deploy(deploy) = task else {
        return Ok(());
    };
    let (Some(o), Some(caller)) = (deploy.policy_override.as_mut(), caller) else {
        return Ok(());
    };
    let principal = caller.principal();
    if !principal.has_role(Role::Admin) {
        return Err(Refusal::Policy(format!(
            "a policy override needs a verified admin; `{}` is not one",
            principal.id
        )));
    }
    if o.reason.trim().is_empty() {
        return Err(Refusal::Policy(
            "a policy override needs a reason".to_owned(),
        ));
    }
    principal.id.clone_into(&mut o.by);
    VERIFIED_ADMIN_ROLE.clone_into(&mut o.role);
    Ok(())
}

/// The two-person rule for a verified decider: the principal who asked for the plan
/// may not decide on it, under whatever name or key they sign.
pub fn check_two_person(plan: &Plan, caller: &Caller) -> Result<(), Refusal> {
    let decider = &caller.principal().id;
    if plan.requested_by_principal.as_deref() == Some(decider.as_str()) {
        return Err(Refusal::Policy(format!(
            "`{decider}` asked for this change and may not approve it (two-person rule)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use toronto_protocol::auth::{Principal, PrincipalKind};
    use toronto_protocol::tasks::{DeployTask, PolicyOverride};

    use super::*;

    fn caller(id: &str, roles: Vec<Role>) -> Caller {
        Caller {
            signer: Arc::new(Principal {
                id: id.into(),
                kind: PrincipalKind::Human,
                roles,
                display_name: String::new(),
                revoked: false,
                keys: vec![],
                sources: vec![],
                chat_ids: vec![],
            }),
            key: "UKEY".into(),
            on_behalf_of: None,
            signed_at: chrono::Utc::now(),
        }
    }

    fn deploy(o: PolicyOverride) -> PlanTask {
        let mut d: DeployTask = serde_json::from_value(serde_json::json!({
            "service": "shop", "version": "1.2.3", "environment": "production"
        }))
        .unwrap();
        d.policy_override = Some(o);
        PlanTask::Deploy(Box::new(d))
    }

    fn forged() -> PolicyOverride {
        PolicyOverride {
            by: "root".into(),
            role: "admin".into(),
            reason: "hotfix".into(),
        }
    }

    #[test]
    fn an_operator_cannot_override_whatever_role_it_writes() {
        let mut task = deploy(forged());
        let refusal =
            check_override(&mut task, Some(&caller("mallory", vec![Role::Operator]))).unwrap_err();
        assert!(
            refusal.to_string().contains("needs a verified admin"),
            "{refusal}"
        );
    }

    #[test]
    fn an_admin_override_is_recorded_under_the_admin_s_id() {
        let mut task = deploy(forged());
        check_override(&mut task, Some(&caller("erin", vec![Role::Admin]))).unwrap();
        let PlanTask::Deploy(d) = task else { panic!() };
        assert_eq!(d.policy_override.unwrap().by, "erin");
    }

    #[test]
    fn an_override_without_a_reason_is_refused() {
        let mut o = forged();
        o.reason = " ".into();
        let mut task = deploy(o);
        assert!(check_override(&mut task, Some(&caller("erin", vec![Role::Admin]))).is_err());
    }
}
