//! The claims of a deployment's OIDC token, in Pulumi's format, from its validated settings
//! (`crate::domain::spec::oidc`).

use serde_json::{Value, json};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::domain::spec::oidc::{AwsOidc, OidcSpec};
use crate::domain::{Deployment, StackRef};

impl OidcSpec {
    /// The token's claims, in Pulumi's format.
    pub fn claims(&self, d: &Deployment, issuer: &str, now: OffsetDateTime, jti: Uuid) -> Value {
        let scope = self.scope(d.operation);
        let vars = Vars { d, scope };
        let sub = match &self.subject_template {
            Some(t) => render(t, &vars),
            None => format!(
                "pulumi:deploy:org:{}:project:{}:stack:{}:operation:{}:scope:{scope}",
                d.stack.org, d.stack.project, d.stack.stack, d.operation
            ),
        };
        let iat = now.unix_timestamp();
        json!({
            "iss": issuer,
            "aud": self.audience.clone().unwrap_or_else(|| d.stack.org.clone()),
            "sub": sub,
            "org": d.stack.org,
            "project": d.stack.project,
            "stack": d.stack.stack,
            "stackId": stack_id(&d.stack),
            "operation": d.operation.as_str(),
            "deployment": d.version,
            "scope": scope,
            "jti": jti.to_string(),
            "iat": iat,
            "nbf": iat,
            "exp": iat + self.token_lifetime.as_secs() as i64,
        })
    }

    /// The AWS session name, rendered and made valid for STS: `[\w+=,.@-]`, 2 to 64 characters.
    pub fn session_name(&self, aws: &AwsOidc, d: &Deployment) -> String {
        let vars = Vars {
            d,
            scope: self.scope(d.operation),
        };
        let mut name: String = render(&aws.session_name, &vars)
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "_+=,.@-".contains(c) {
                    c
                } else {
                    '-'
                }
            })
            .take(64)
            .collect();
        while name.len() < 2 {
            name.push('-');
        }
        name
    }
}

/// A stable, opaque id for a stack, shaped like a UUID (Pulumi's `stackId` is one).
pub fn stack_id(stack: &StackRef) -> String {
    crate::crypto::derived_uuid(&[b"tarmac-stack:", stack.to_string().as_bytes()]).to_string()
}

struct Vars<'a> {
    d: &'a Deployment,
    scope: &'a str,
}

fn render(template: &str, vars: &Vars<'_>) -> String {
    let d = vars.d;
    template
        .replace("${organization.name}", &d.stack.org)
        .replace("${project.name}", &d.stack.project)
        .replace("${stack.name}", &d.stack.stack)
        .replace("${deployment.operation}", d.operation.as_str())
        .replace("${deployment.version}", &d.version.to_string())
        .replace("${deployment.id}", &d.id.to_string())
        .replace("${deployment.scope}", vars.scope)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::spec::oidc::SUBJECT_PREFIX;
    use crate::domain::spec::{DeploymentConfig, SourcePolicy};
    use crate::domain::{JobStatus, Operation};
    use crate::error::Result;

    fn deployment(op: Operation) -> Deployment {
        Deployment {
            id: Uuid::parse_str("6f1d0a52-3b1c-4d59-9d7e-2f4b8f7a9c10").unwrap(),
            stack: StackRef {
                org: "acme".into(),
                project: "web".into(),
                stack: "prod".into(),
            },
            version: 7,
            latest_version: 7,
            operation: op,
            status: JobStatus::Running,
            config: DeploymentConfig::parse(
                json!({"sourceContext": {"git": {"repoUrl": "https://h/r.git"}}}),
                SourcePolicy::Stored,
            )
            .unwrap(),
            initiator: "api".into(),
            requested_by: "u".into(),
            created: OffsetDateTime::UNIX_EPOCH,
            modified: OffsetDateTime::UNIX_EPOCH,
            started: None,
            steps: vec![],
            stack_paused: false,
            update: None,
            approval: None,
        }
    }

    fn spec(oidc: Value) -> Result<Option<OidcSpec>> {
        OidcSpec::from_config(&json!({"operationContext": {"oidc": oidc}}))
    }

    #[test]
    fn default_claims_follow_pulumis_format() {
        let s = spec(json!({"aws": {"roleArn": "arn:aws:iam::1:role/r", "sessionName": "s"}}))
            .unwrap()
            .unwrap();
        let d = deployment(Operation::Update);
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let c = s.claims(&d, "https://t.example/oidc", now, Uuid::nil());
        assert_eq!(c["iss"], "https://t.example/oidc");
        assert_eq!(c["aud"], "acme");
        assert_eq!(
            c["sub"],
            "pulumi:deploy:org:acme:project:web:stack:prod:operation:update:scope:write"
        );
        assert_eq!(c["deployment"], 7);
        assert_eq!(c["operation"], "update");
        assert_eq!(c["scope"], "write");
        assert_eq!(c["exp"], 1_800_003_600);
        assert_eq!(c["nbf"], c["iat"]);
        assert_eq!(c["stackId"], stack_id(&d.stack));
        assert_ne!(
            stack_id(&d.stack),
            stack_id(&StackRef {
                stack: "dev".into(),
                ..d.stack.clone()
            })
        );
    }

    #[test]
    fn read_scope_audience_subject_template_and_lifetime_are_honoured() {
        let s = spec(json!({
            "readScope": true,
            "audience": "api://AzureADTokenExchange",
            "subjectTemplate": "pulumi:deploy:org:${organization.name}:project:${project.name}:stack:${stack.name}",
            "tokenExpiration": "12h",
        }))
        .unwrap()
        .unwrap();
        let now = OffsetDateTime::from_unix_timestamp(0).unwrap();
        let preview = s.claims(&deployment(Operation::Preview), "i", now, Uuid::nil());
        let update = s.claims(&deployment(Operation::Update), "i", now, Uuid::nil());
        assert_eq!(preview["scope"], "read");
        assert_eq!(update["scope"], "write");
        // The template's subject is the same for every operation.
        assert_eq!(
            preview["sub"],
            "pulumi:deploy:org:acme:project:web:stack:prod"
        );
        assert_eq!(preview["sub"], update["sub"]);
        assert_eq!(preview["aud"], "api://AzureADTokenExchange");
        assert_eq!(preview["exp"], 12 * 3600);
        // Without readScope, previews write as in Pulumi.
        let plain = spec(json!({})).unwrap().unwrap();
        let c = plain.claims(&deployment(Operation::Preview), "i", now, Uuid::nil());
        assert_eq!(c["scope"], "write");
        assert!(
            c["sub"]
                .as_str()
                .unwrap()
                .ends_with(":operation:preview:scope:write")
        );
    }

    #[test]
    fn session_names_render_their_variables_and_fit_sts() {
        let s = spec(json!({"aws": {"roleArn": "r", "sessionName": "${organization.name}/${stack.name}-${deployment.operation}-${deployment.version}-${deployment.id}"}}))
            .unwrap()
            .unwrap();
        let name = s.session_name(s.aws.as_ref().unwrap(), &deployment(Operation::DetectDrift));
        assert_eq!(
            name,
            "acme-prod-detect-drift-7-6f1d0a52-3b1c-4d59-9d7e-2f4b8f7a9c10"
        );
        let long = spec(json!({"aws": {"roleArn": "r", "sessionName": "x".repeat(100)}}))
            .unwrap()
            .unwrap();
        assert_eq!(
            long.session_name(long.aws.as_ref().unwrap(), &deployment(Operation::Update))
                .len(),
            64
        );
    }

    #[test]
    fn absent_oidc_means_no_token_and_bad_values_are_refused_with_their_path() {
        assert_eq!(OidcSpec::from_config(&json!({})).unwrap(), None);
        let cases = [
            (
                json!({"aws": {"sessionName": "s"}}),
                "operationContext.oidc.aws.roleArn is required",
            ),
            (
                json!({"aws": {"roleArn": "r", "duration": "5m"}}),
                "aws.duration must be between 900s and 43200s",
            ),
            (
                json!({"aws": {"roleArn": "r", "duration": "soon"}}),
                "is not a duration",
            ),
            (
                json!({"aws": {"roleArn": "r", "sessionName": "${user.name}"}}),
                "unknown variable '${user.name}'",
            ),
            (
                json!({"azure": {"clientId": "c"}}),
                "azure.tenantId is required",
            ),
            (
                json!({"gcp": {"projectId": "1", "workloadPoolId": "p", "providerId": "x"}}),
                "gcp.serviceAccount is required",
            ),
            (
                json!({"tokenExpiration": "13h"}),
                "tokenExpiration must be between 60s and 43200s",
            ),
            (json!({"subjectTemplate": "a:${stack.name"}), "unclosed"),
            (
                json!({"subjectTemplate": "pulumi:deploy:org:other:project:p:stack:prod"}),
                "must start with",
            ),
            (
                json!({"subjectTemplate": "x:pulumi:deploy:org:${organization.name}:project:${project.name}:stack:${stack.name}"}),
                "must start with",
            ),
            (
                json!({"audience": "other-org"}),
                "looks like an organization name",
            ),
            (json!({"audience": "a".repeat(600)}), "longer than"),
            (
                json!({"aws": {"roleArn": "r", "sessionName": "${deployment.scope}"}}),
                "unknown variable",
            ),
        ];
        for (oidc, want) in cases {
            let err = spec(oidc.clone()).unwrap_err().to_string();
            assert!(err.contains(want), "{oidc}: {err}");
        }
        // The subject may add the scope after its stack.
        spec(json!({"subjectTemplate": format!("{SUBJECT_PREFIX}:scope:${{deployment.scope}}")}))
            .unwrap();
    }
}
