use std::collections::BTreeMap;

use k8s_openapi::api::certificates::v1::PodCertificateRequestSpec;
use kube::api::ObjectMeta;

use super::*;

fn signer() -> SignerName {
    SignerName::parse("meshca.io/workload").expect("valid")
}

fn td() -> TrustDomain {
    TrustDomain::new("cluster.local").expect("td")
}

fn pcr(edit: impl FnOnce(&mut PodCertificateRequest)) -> PodCertificateRequest {
    let mut p = PodCertificateRequest {
        metadata: ObjectMeta {
            name: Some("web-1".into()),
            namespace: Some("shop".into()),
            generation: Some(1),
            ..ObjectMeta::default()
        },
        spec: PodCertificateRequestSpec {
            signer_name: "meshca.io/workload".into(),
            service_account_name: "web".into(),
            pod_name: "web-1".into(),
            max_expiration_seconds: Some(86_400),
            ..PodCertificateRequestSpec::default()
        },
        status: None,
    };
    edit(&mut p);
    p
}

const DAY: Duration = Duration::from_secs(86_400);

#[test]
fn the_identity_comes_from_the_namespace_and_service_account() {
    let next = decide(&pcr(|_| {}), &signer(), &td(), ProviderKind::Tresor, DAY);
    let Next::Sign { identity, ttl } = next else {
        panic!("{next:?}")
    };
    assert_eq!(
        identity.spiffe_id(),
        "spiffe://cluster.local/ns/shop/sa/web"
    );
    assert_eq!(ttl, DAY);
}

#[test]
fn the_lifetime_is_bounded_by_the_request_and_max_ttl_and_at_least_an_hour() {
    let hour = Duration::from_secs(3600);
    assert_eq!(lifetime(Some(7200), DAY), Duration::from_secs(7200));
    assert_eq!(lifetime(Some(7_862_400), DAY), DAY, "max_ttl caps");
    assert_eq!(lifetime(None, 2 * DAY), DAY, "the API server's default");
    assert_eq!(lifetime(Some(60), DAY), hour, "never under an hour");
}

#[test]
fn other_signers_and_answered_requests_are_skipped() {
    let other = pcr(|p| p.spec.signer_name = "example.com/other".into());
    assert_eq!(
        decide(&other, &signer(), &td(), ProviderKind::Tresor, DAY),
        Next::Skip
    );
    let issued = pcr(|p| {
        p.status = Some(status(
            &Answer::Failed {
                reason: "X",
                message: "y".into(),
            },
            Some(1),
            OffsetDateTime::now_utc(),
        ));
    });
    assert!(is_answered(&issued));
    assert_eq!(
        decide(&issued, &signer(), &td(), ProviderKind::Tresor, DAY),
        Next::Skip
    );
}

#[test]
fn unknown_annotations_are_denied_by_name() {
    let annotated = pcr(|p| {
        p.spec.unverified_user_annotations = Some(BTreeMap::from([(
            "example.com/role".into(),
            "admin".into(),
        )]));
    });
    let next = decide(&annotated, &signer(), &td(), ProviderKind::Tresor, DAY);
    assert!(
        matches!(&next, Next::Answer(Answer::Denied { reason: "UnsupportedAnnotation", message }) if message.contains("example.com/role")),
        "{next:?}"
    );
}

#[test]
fn cert_manager_fails_with_the_reason() {
    let next = decide(
        &pcr(|_| {}),
        &signer(),
        &td(),
        ProviderKind::CertManager,
        DAY,
    );
    assert!(
        matches!(&next, Next::Answer(Answer::Failed { message, .. }) if message.contains("stub CSR carries none")),
        "{next:?}"
    );
}

#[test]
fn signing_errors_become_final_answers_or_retries() {
    let unsupported = after_signing(Err(IssueError::Csr(CsrError::UnsupportedKey(
        "ECDSA P-521".into(),
    ))));
    assert!(
        matches!(&unsupported, Ok(Answer::Denied { reason: "UnsupportedKeyType", message }) if message.contains("ECDSAP256")),
        "{unsupported:?}"
    );
    let malformed = after_signing(Err(IssueError::Csr(CsrError::Malformed("junk".into()))));
    assert!(matches!(
        malformed,
        Ok(Answer::Failed {
            reason: "InvalidStubCSR",
            ..
        })
    ));
    let down = after_signing(Err(IssueError::Provider(
        meshca_provider::ProviderError::Unavailable {
            message: "sealed".into(),
            retry_after: Duration::from_secs(7),
        },
    )));
    assert_eq!(
        down,
        Err(Some(Duration::from_secs(7))),
        "a transient failure is never final"
    );
    let refused = after_signing(Err(IssueError::Provider(
        meshca_provider::ProviderError::Rejected {
            reason: "Failed".into(),
            message: "no such role".into(),
        },
    )));
    assert!(matches!(
        refused,
        Ok(Answer::Failed {
            reason: "ProviderFailed",
            ..
        })
    ));
    assert_eq!(
        after_signing(Err(IssueError::DenyList("io".into()))),
        Err(None)
    );
}

#[test]
fn an_issued_status_sets_every_field_in_one_write() {
    let not_before = OffsetDateTime::from_unix_timestamp(1_000_000).expect("time");
    let answer = Answer::Issued {
        chain_pem: "PEM".into(),
        not_before,
        not_after: not_before + DAY,
        begin_refresh_at: not_before + DAY * 2 / 3,
    };
    let s = status(&answer, Some(3), OffsetDateTime::now_utc());
    assert_eq!(s.certificate_chain.as_deref(), Some("PEM"));
    assert_eq!(s.not_before.expect("nb").0.as_second(), 1_000_000);
    assert_eq!(s.not_after.expect("na").0.as_second(), 1_086_400);
    assert_eq!(s.begin_refresh_at.expect("br").0.as_second(), 1_057_600);
    let conditions = s.conditions.expect("conditions");
    assert_eq!(conditions.len(), 1);
    assert_eq!(
        (conditions[0].type_.as_str(), conditions[0].status.as_str()),
        ("Issued", "True")
    );
    assert_eq!(conditions[0].observed_generation, Some(3));
}
