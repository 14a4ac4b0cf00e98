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
const HOUR: Duration = Duration::from_secs(3600);

fn lifetimes(max_ttl: Duration) -> Lifetimes {
    Lifetimes {
        default_ttl: max_ttl.min(DAY),
        min_ttl: Duration::from_secs(600),
        max_ttl,
    }
}

#[test]
fn the_identity_comes_from_the_namespace_and_service_account() {
    let next = decide(&pcr(|_| {}), &signer(), &td(), &lifetimes(DAY));
    let Next::Sign { identity, bounds } = next else {
        panic!("{next:?}")
    };
    assert_eq!(
        identity.spiffe_id(),
        "spiffe://cluster.local/ns/shop/sa/web"
    );
    assert_eq!(bounds.lifetime, DAY);
}

#[test]
fn the_window_is_bounded_by_the_request_and_max_ttl_and_at_least_an_hour() {
    let b = |max_exp, max_ttl| {
        let b = bounds(max_exp, &lifetimes(max_ttl));
        (b.lifetime, b.floor, b.ceiling)
    };
    let two_hours = Duration::from_secs(7200);
    assert_eq!(b(Some(7200), DAY), (two_hours, HOUR, two_hours));
    assert_eq!(b(Some(7_862_400), DAY), (DAY, HOUR, DAY), "max_ttl caps");
    assert_eq!(
        b(None, 2 * DAY),
        (DAY, HOUR, DAY),
        "the API server's default"
    );
    assert_eq!(b(Some(3600), DAY), (HOUR, HOUR, HOUR));
    assert_eq!(b(Some(60), DAY), (HOUR, HOUR, HOUR), "never under an hour");
}

#[test]
fn kubelet_is_told_to_refresh_ten_minutes_inside_either_end() {
    let nb = OffsetDateTime::from_unix_timestamp(1_000_000).expect("time");
    let now = nb + Duration::from_secs(60);
    for lifetime in [HOUR, 2 * HOUR, DAY, 91 * DAY] {
        let na = nb + lifetime;
        let at = begin_refresh_at(nb, na, now);
        assert!(at >= nb + Duration::from_secs(600), "{lifetime:?}");
        assert!(at <= na - Duration::from_secs(600), "{lifetime:?}");
    }
    // Issued long after NotBefore (a slow backend and a long backdate):
    // two thirds of what remains would fall in the last ten minutes.
    let late = nb + Duration::from_secs(3300);
    assert_eq!(
        begin_refresh_at(nb, nb + HOUR, late),
        nb + HOUR - Duration::from_secs(600)
    );
}

fn issued(nb: OffsetDateTime, na: OffsetDateTime, chain_pem: String) -> Answer {
    Answer::Issued {
        chain_pem,
        not_before: nb,
        not_after: na,
        begin_refresh_at: begin_refresh_at(nb, na, nb),
    }
}

#[test]
fn an_answer_the_api_server_would_refuse_is_recognised_before_it_is_written() {
    let now = OffsetDateTime::from_unix_timestamp(1_000_000).expect("time");
    let nb = now - Duration::from_secs(60);
    let ok = issued(nb, nb + DAY, "PEM".into());
    assert_eq!(acceptable(&ok, Some(86_400), now), Ok(()));
    assert_eq!(acceptable(&ok, None, now), Ok(()), "the default is a day");
    for (answer, max_exp, needle) in [
        (
            issued(nb, nb + DAY + Duration::from_secs(60), "PEM".into()),
            Some(86_400),
            "maxExpirationSeconds",
        ),
        (
            issued(nb, nb + DAY, "PEM".into()),
            Some(7200),
            "maxExpirationSeconds",
        ),
        (
            issued(nb, nb + HOUR - Duration::from_secs(1), "PEM".into()),
            Some(86_400),
            "3600s",
        ),
        (
            issued(now - Duration::from_secs(301), now + HOUR, "PEM".into()),
            Some(86_400),
            "NotBefore",
        ),
        (
            issued(nb, nb + DAY, "x".repeat(100 * 1024 + 1)),
            Some(86_400),
            "bytes",
        ),
    ] {
        let e = acceptable(&answer, max_exp, now).expect_err(needle);
        assert!(e.contains(needle), "{e}");
    }
    let Answer::Issued {
        not_before,
        not_after,
        ..
    } = ok
    else {
        unreachable!()
    };
    let early = Answer::Issued {
        chain_pem: "PEM".into(),
        not_before,
        not_after,
        begin_refresh_at: not_before + Duration::from_secs(599),
    };
    assert!(acceptable(&early, None, now).is_err());
}

#[test]
fn other_signers_and_answered_requests_are_skipped() {
    let other = pcr(|p| p.spec.signer_name = "example.com/other".into());
    assert_eq!(
        decide(&other, &signer(), &td(), &lifetimes(DAY)),
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
        decide(&issued, &signer(), &td(), &lifetimes(DAY)),
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
    let next = decide(&annotated, &signer(), &td(), &lifetimes(DAY));
    assert!(
        matches!(&next, Next::Refuse(Answer::Denied { reason: "UnsupportedAnnotation", message }) if message.contains("example.com/role")),
        "{next:?}"
    );
}

fn signing(refusal: Refusal) -> Result<Answer, Duration> {
    after_signing(Err(refusal), Some(86_400), OffsetDateTime::now_utc())
}

fn provider(e: meshca_provider::ProviderError) -> Refusal {
    Refusal::Provider(e)
}

#[test]
fn a_provider_that_cannot_sign_a_stub_csr_fails_the_request_with_its_reason() {
    let cannot = signing(provider(
        meshca_provider::ProviderError::UnsupportedRequest(
            "the cert-manager provider signs only the names a CSR carries".into(),
        ),
    ));
    assert!(
        matches!(&cannot, Ok(Answer::Failed { reason: "ProviderCannotSign", message }) if message.contains("cert-manager")),
        "{cannot:?}"
    );
}

#[test]
fn signing_errors_become_final_answers_or_retries() {
    let unsupported = signing(Refusal::Csr(CsrError::UnsupportedKey("ECDSA P-521".into())));
    assert!(
        matches!(&unsupported, Ok(Answer::Denied { reason: "UnsupportedKeyType", message }) if message.contains("ECDSAP256")),
        "{unsupported:?}"
    );
    let malformed = signing(Refusal::Csr(CsrError::Malformed("junk".into())));
    assert!(matches!(
        malformed,
        Ok(Answer::Failed {
            reason: "InvalidStubCSR",
            ..
        })
    ));
    let down = signing(provider(meshca_provider::ProviderError::Unavailable {
        message: "sealed".into(),
        retry_after: Duration::from_secs(7),
        source: None,
    }));
    assert_eq!(
        down,
        Err(Duration::from_secs(7)),
        "a transient failure is never final"
    );
    let refused = signing(provider(meshca_provider::ProviderError::Rejected {
        reason: "Failed".into(),
        message: "no such role".into(),
    }));
    assert!(matches!(
        refused,
        Ok(Answer::Failed {
            reason: "ProviderFailed",
            ..
        })
    ));
    let unreadable = signing(Refusal::DenyList(crate::issuer::DenyListError::ConfigMap));
    assert!(
        matches!(
            &unreadable,
            Ok(Answer::Failed {
                reason: "DenyListUnreadable",
                ..
            })
        ),
        "{unreadable:?}"
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
