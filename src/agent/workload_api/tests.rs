//! The service without a socket: the security header, the JWT profile, and
//! what the streams send as the agent publishes.

use std::time::Duration;

use futures_util::StreamExt;
use rcgen::{CertificateParams, IsCa, KeyPair, KeyUsagePurpose, SanType};
use time::OffsetDateTime;
use tonic::Code;
use zeroize::Zeroizing;

use super::*;

fn held(is_ca: IsCa, bundle_pem: Option<&str>) -> Held {
    let identity =
        meshca_provider::Identity::from_spiffe_id("spiffe://cluster.local/ns/shop/sa/web")
            .expect("identity");
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(identity.spiffe_id().try_into().expect("uri"))];
    params.is_ca = is_ca;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let cert = params.self_signed(&key).expect("cert").pem();
    Held {
        identity,
        bundle_pem: bundle_pem.map_or_else(|| cert.clone(), str::to_owned),
        chain_pem: cert,
        federated: Default::default(),
        crl_pem: None,
        crl_etag: None,
        key_pem: Zeroizing::new(key.serialize_pem()),
        not_before: OffsetDateTime::now_utc(),
        not_after: OffsetDateTime::now_utc() + Duration::from_secs(3600),
        generation: None,
    }
}

fn service() -> (Publisher, Service) {
    let (state, receiver) = watch::channel(Served::Pending);
    (
        Publisher { state },
        Service {
            state: receiver,
            tokens: None,
        },
    )
}

fn with_header<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert(SECURITY_HEADER, "true".parse().expect("value"));
    request
}

async fn next<T>(stream: &mut Updates<T>) -> Option<Result<T, Status>> {
    tokio::time::timeout(Duration::from_millis(300), stream.next())
        .await
        .ok()
        .flatten()
}

#[tokio::test]
async fn every_call_without_the_security_header_is_invalid() {
    let (_publisher, service) = service();
    let code = |r: Result<_, Status>| r.err().map(|s| s.code());
    assert_eq!(
        code(
            service
                .fetch_x509svid(Request::new(proto::X509svidRequest {}))
                .await
                .map(|_| ())
        ),
        Some(Code::InvalidArgument)
    );
    assert_eq!(
        code(
            service
                .fetch_x509_bundles(Request::new(proto::X509BundlesRequest {}))
                .await
                .map(|_| ())
        ),
        Some(Code::InvalidArgument)
    );
    let mut wrong = Request::new(proto::JwtsvidRequest::default());
    wrong
        .metadata_mut()
        .insert(SECURITY_HEADER, "yes".parse().expect("value"));
    assert_eq!(
        code(service.fetch_jwtsvid(wrong).await.map(|_| ())),
        Some(Code::InvalidArgument)
    );
}

#[tokio::test]
async fn the_jwt_profile_is_unimplemented() {
    let (_publisher, service) = service();
    let status = service
        .fetch_jwtsvid(with_header(proto::JwtsvidRequest::default()))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::Unimplemented);
    let status = service
        .validate_jwtsvid(with_header(proto::ValidateJwtsvidRequest::default()))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::Unimplemented);
    assert!(service
        .fetch_jwt_bundles(with_header(proto::JwtBundlesRequest {}))
        .await
        .is_err_and(|s| s.code() == Code::Unimplemented));
}

#[tokio::test]
async fn a_stream_waits_for_the_first_certificate_then_follows_renewals() {
    let (publisher, service) = service();
    let mut svids = service
        .fetch_x509svid(with_header(proto::X509svidRequest {}))
        .await
        .expect("stream")
        .into_inner();
    assert!(
        next(&mut svids).await.is_none(),
        "nothing before a certificate"
    );

    let first = held(IsCa::ExplicitNoCa, None);
    publisher.publish(&first);
    let message = next(&mut svids).await.expect("first").expect("ok");
    let svid = &message.svids[0];
    assert_eq!(svid.spiffe_id, "spiffe://cluster.local/ns/shop/sa/web");
    let chain = meshca_provider::pem::decode_certificates(first.chain_pem.as_bytes()).expect("pem");
    assert_eq!(svid.x509_svid, chain[0].as_ref());
    assert!(!svid.x509_svid_key.is_empty());

    publisher.publish(&first);
    assert!(
        next(&mut svids).await.is_none(),
        "the same SVID is not sent twice"
    );

    let renewed = held(IsCa::ExplicitNoCa, None);
    publisher.publish(&renewed);
    let message = next(&mut svids).await.expect("renewal").expect("ok");
    assert_ne!(message.svids[0].x509_svid, svid.x509_svid);
}

#[tokio::test]
async fn the_bundle_stream_sends_only_bundle_changes() {
    let (publisher, service) = service();
    let anchors = held(IsCa::ExplicitNoCa, None).chain_pem;
    publisher.publish(&held(IsCa::ExplicitNoCa, Some(&anchors)));
    let mut bundles = service
        .fetch_x509_bundles(with_header(proto::X509BundlesRequest {}))
        .await
        .expect("stream")
        .into_inner();
    let first = next(&mut bundles).await.expect("first").expect("ok");
    let bundle = first
        .bundles
        .get("spiffe://cluster.local")
        .expect("keyed by trust domain");
    assert_eq!(
        bundle,
        meshca_provider::pem::decode_certificates(anchors.as_bytes()).expect("pem")[0].as_ref()
    );

    publisher.publish(&held(IsCa::ExplicitNoCa, Some(&anchors)));
    assert!(
        next(&mut bundles).await.is_none(),
        "a renewal under the same bundle"
    );

    let rotated = format!("{anchors}{}", held(IsCa::ExplicitNoCa, None).chain_pem);
    publisher.publish(&held(IsCa::ExplicitNoCa, Some(&rotated)));
    let second = next(&mut bundles)
        .await
        .expect("bundle change")
        .expect("ok");
    assert!(second.bundles["spiffe://cluster.local"].len() > bundle.len());
}

#[tokio::test]
async fn a_certificate_that_breaks_the_svid_rules_is_refused_by_name() {
    let (publisher, service) = service();
    publisher.publish(&held(IsCa::NoCa, None));
    let mut svids = service
        .fetch_x509svid(with_header(proto::X509svidRequest {}))
        .await
        .expect("stream")
        .into_inner();
    let status = next(&mut svids).await.expect("answer").expect_err("error");
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status.message().contains("basicConstraints"),
        "{}",
        status.message()
    );
    assert!(next(&mut svids).await.is_none(), "the stream ends");
}

#[tokio::test]
async fn streams_end_when_the_agent_stops() {
    let (publisher, service) = service();
    publisher.publish(&held(IsCa::ExplicitNoCa, None));
    let mut svids = service
        .fetch_x509svid(with_header(proto::X509svidRequest {}))
        .await
        .expect("stream")
        .into_inner();
    assert!(next(&mut svids).await.is_some_and(|m| m.is_ok()));
    drop(publisher);
    drop(service);
    let ended = tokio::time::timeout(Duration::from_secs(1), svids.next()).await;
    assert!(matches!(ended, Ok(None)), "the stream ended");
}
