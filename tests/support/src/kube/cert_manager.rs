//! A cert-manager CA issuer, played by the stand-in.

use super::*;

/// How the stand-in's cert-manager CA issuer answers a CertificateRequest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IssuerBehaviour {
    /// Approve and sign, as cert-manager's CA issuer does.
    Sign,
    /// Approve and sign, but leave `status.ca` empty (ACME-like issuers).
    SignWithoutCa,
    /// Deny (as an approver policy would).
    Deny,
    /// Approve, then fail (Ready=False, reason Failed).
    Fail,
    /// Never answer.
    Ignore,
    /// Approve, then never sign (an issuer that is down).
    ApproveOnly,
    /// Sign for this many seconds, whatever `spec.duration` asks (issuers
    /// that round lifetimes up).
    SignFor(i64),
    /// Sign with an extra name the CSR did not ask for.
    WrongSan,
    /// Sign a CA certificate.
    CaCert,
}

/// A cert-manager CA issuer played by the stand-in: it watches
/// CertificateRequests for its issuerRef and answers them the way
/// cert-manager's controllers do (approval, then signing what the CSR names
/// with its own CA, then conditions), independently of meshca's code.
pub struct CaIssuer {
    pub ca_pem: String,
    pub(crate) behaviour: Arc<Mutex<IssuerBehaviour>>,
    pub(crate) answered: Arc<AtomicUsize>,
    pub(crate) latency: Arc<Mutex<Duration>>,
    pub(crate) task: tokio::task::JoinHandle<()>,
}

impl Drop for CaIssuer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl CaIssuer {
    pub fn set(&self, b: IssuerBehaviour) {
        *self.behaviour.lock().expect("lock") = b;
    }

    /// Answer each request `latency` after it is created (5 ms unless
    /// set), as cert-manager's approver and issuer take their time.
    pub fn set_latency(&self, latency: Duration) {
        *self.latency.lock().expect("lock") = latency;
    }

    /// Requests answered (any outcome) so far.
    pub fn answered(&self) -> usize {
        self.answered.load(Ordering::SeqCst)
    }
}

impl KubeStandIn {
    /// Start an issuer answering requests whose issuerRef is `kind`/`name`.
    pub fn start_ca_issuer(&self, kind: &str, name: &str) -> CaIssuer {
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("{name} CA (cert-manager stand-in)"),
        );
        let ca_pem = params.self_signed(&ca_key).expect("ca").pem();
        let issuer = Arc::new(rcgen::Issuer::new(params, ca_key));
        let behaviour = Arc::new(Mutex::new(IssuerBehaviour::Sign));
        let answered = Arc::new(AtomicUsize::new(0));
        let latency = Arc::new(Mutex::new(Duration::from_millis(5)));
        let mut events = self.inner.events.subscribe();
        let inner = self.inner.clone();
        let (kind, name) = (kind.to_owned(), name.to_owned());
        let (b, a, ca) = (behaviour.clone(), answered.clone(), ca_pem.clone());
        let l = latency.clone();
        let task = tokio::spawn(async move {
            loop {
                let event = match events.recv().await {
                    Ok(e) => e,
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                if event.kind != "ADDED" || event.plural != "certificaterequests" {
                    continue;
                }
                let spec = &event.object["spec"];
                if spec.pointer("/issuerRef/kind").and_then(Value::as_str) != Some(kind.as_str())
                    || spec.pointer("/issuerRef/name").and_then(Value::as_str)
                        != Some(name.as_str())
                {
                    continue;
                }
                let behaviour = *b.lock().expect("lock");
                if behaviour == IssuerBehaviour::Ignore {
                    continue;
                }
                let status = answer(&event.object, behaviour, &issuer, &ca);
                let (inner, a) = (inner.clone(), a.clone());
                let object = event.object.clone();
                let wait = *l.lock().expect("lock");
                tokio::spawn(async move {
                    tokio::time::sleep(wait).await;
                    let (ns, n) = namespace_and_name(&object);
                    let def = inner
                        .resources
                        .iter()
                        .find(|d| d.plural == "certificaterequests")
                        .cloned()
                        .expect("served");
                    let mut store = inner.store.lock().expect("lock");
                    let key: Key = (def.group, def.plural, ns, n);
                    if let Some(mut current) = store.objects.get(&key).cloned() {
                        current["status"] = status;
                        commit(
                            &inner,
                            &mut store,
                            &def,
                            key,
                            Some((current, Owner::Update("cert-manager"))),
                            "MODIFIED",
                        );
                        a.fetch_add(1, Ordering::SeqCst);
                    }
                });
            }
        });
        CaIssuer {
            ca_pem,
            behaviour,
            answered,
            latency,
            task,
        }
    }
}

pub(crate) fn cond(kind: &str, status: &str, reason: &str, message: &str) -> Value {
    json!({ "type": kind, "status": status, "reason": reason, "message": message, "lastTransitionTime": now_rfc3339() })
}

/// What cert-manager would write into `status` for `cr`.
pub(crate) fn answer(
    cr: &Value,
    behaviour: IssuerBehaviour,
    issuer: &rcgen::Issuer<'static, rcgen::KeyPair>,
    ca_pem: &str,
) -> Value {
    let approved = cond(
        "Approved",
        "True",
        "cert-manager.io",
        "Certificate request has been approved by cert-manager.io",
    );
    match behaviour {
        IssuerBehaviour::Deny => {
            return json!({ "conditions": [
                cond("Denied", "True", "policy.cert-manager.io", "identity not permitted by the approver policy"),
                cond("Ready", "False", "Denied", "The CertificateRequest was denied by an approval controller"),
            ]})
        }
        IssuerBehaviour::Fail => {
            return json!({ "conditions": [
                approved,
                cond("Ready", "False", "Failed", "Error signing certificate: the CA key is unavailable"),
            ]})
        }
        IssuerBehaviour::ApproveOnly => return json!({ "conditions": [approved] }),
        _ => {}
    }
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let request = cr
        .pointer("/spec/request")
        .and_then(Value::as_str)
        .and_then(|r| base64::engine::general_purpose::STANDARD.decode(r).ok())
        .and_then(|r| String::from_utf8(r).ok())
        .unwrap_or_default();
    let mut csr = match rcgen::CertificateSigningRequestParams::from_pem(&request) {
        Ok(c) => c,
        Err(e) => {
            return json!({ "conditions": [
                approved,
                cond("Ready", "False", "Failed", &format!("Failed to decode CSR in spec.request: {e}")),
            ]})
        }
    };
    let seconds = match behaviour {
        IssuerBehaviour::SignFor(s) => s,
        _ => cr
            .pointer("/spec/duration")
            .and_then(Value::as_str)
            .and_then(|d| d.trim_end_matches('s').parse::<i64>().ok())
            .unwrap_or(90 * 24 * 3600),
    };
    let now = time::OffsetDateTime::now_utc();
    let p = &mut csr.params;
    p.not_before = now;
    p.not_after = now + time::Duration::seconds(seconds);
    p.is_ca = if cr.pointer("/spec/isCA").and_then(Value::as_bool) == Some(true)
        || behaviour == IssuerBehaviour::CaCert
    {
        rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained)
    } else {
        rcgen::IsCa::NoCa
    };
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::DigitalSignature,
        rcgen::KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p.use_authority_key_identifier_extension = true;
    let mut serial = [0u8; 16];
    {
        use aws_lc_rs::rand::SecureRandom;
        aws_lc_rs::rand::SystemRandom::new()
            .fill(&mut serial)
            .expect("random");
    }
    p.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
    if behaviour == IssuerBehaviour::WrongSan {
        p.subject_alt_names.push(rcgen::SanType::DnsName(
            "evil.example.com".try_into().expect("dns"),
        ));
    }
    let cert = csr.signed_by(issuer).expect("sign").pem();
    let ca = if behaviour == IssuerBehaviour::SignWithoutCa {
        String::new()
    } else {
        b64(ca_pem)
    };
    json!({
        "certificate": b64(&cert),
        "ca": ca,
        "conditions": [approved, cond("Ready", "True", "Issued", "Certificate fetched from issuer successfully")],
    })
}
