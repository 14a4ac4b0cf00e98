//! Key custody in a PKCS#11 token (an HSM, or SoftHSM): keys are made on
//! the token as sensitive and non-extractable, and sign there; meshca
//! reads only their public points.
//!
//! PKCS#11 calls block, so each runs on the blocking pool. Sessions are
//! pooled: one is taken per call and returned after it, and one that the
//! token failed is dropped, so the next call opens (and logs in) afresh:
//! a token pulled and put back is used again without a restart.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Function, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use meshca_provider::crypto::custody::{Custody, CustodyAlgorithm, CustodyError, CustodyKey};

const BACKEND: &str = "pkcs11";

/// How long to suggest waiting while the token is unavailable.
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// Where the token's user PIN comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PinSource {
    /// A file (trailing whitespace ignored), e.g. a mounted Secret.
    File(PathBuf),
    /// An environment variable.
    Env(String),
}

/// `key_custody.pkcs11`, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pkcs11Config {
    /// The vendor's PKCS#11 module (a shared library).
    pub module: PathBuf,
    /// The label of the token holding meshca's keys.
    pub token_label: String,
    /// The user PIN.
    pub pin: PinSource,
}

/// A token as a custodian.
pub struct Token {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("label", &self.inner.label)
            .finish_non_exhaustive()
    }
}

struct Inner {
    context: Pkcs11,
    module: String,
    slot: Mutex<Slot>,
    label: String,
    pin: AuthPin,
    idle: Mutex<Vec<Session>>,
    /// When the module was last reloaded to find the token again.
    reloaded: Mutex<Option<Instant>>,
}

/// Every PKCS#11 call of the process holds this shared; loading and
/// reloading the module (`C_Initialize`, `C_Finalize`) hold it alone,
/// since no call may be in flight then, and a module is loaded once per
/// process.
static MODULE: RwLock<()> = RwLock::new(());

/// Why one try of a call failed.
enum Attempt {
    /// No session could be opened: the token seems gone.
    NoSession(CkError),
    /// The call failed.
    Failed(CkError),
}

impl Attempt {
    fn error(&self) -> &CkError {
        match self {
            Self::NoSession(e) | Self::Failed(e) => e,
        }
    }
}

impl Drop for Inner {
    /// Close the idle sessions while no reload runs.
    fn drop(&mut self) {
        let _shared = MODULE.read();
        if let Ok(mut idle) = self.idle.lock() {
            idle.clear();
        }
    }
}

/// How often the module may be reloaded while the token is away.
const RELOAD_EVERY: Duration = Duration::from_secs(1);

impl Token {
    /// Load the module, find the token by its label and log in, so that
    /// a missing module or token, or a wrong PIN, stops the start.
    ///
    /// # Errors
    /// [`CustodyError::Refused`] naming what is wrong.
    pub async fn open(config: &Pkcs11Config) -> Result<Self, CustodyError> {
        let pin = read_pin(&config.pin).await?;
        let config = config.clone();
        let inner = blocking(move || Inner::open(&config, pin)).await??;
        let inner = Arc::new(inner);
        let probe = inner.clone();
        blocking(move || probe.with_session(|_| Ok(()))).await??;
        tracing::info!(token = %inner.label, "key custody in a PKCS#11 token");
        Ok(Self { inner })
    }
}

impl Inner {
    fn open(config: &Pkcs11Config, pin: AuthPin) -> Result<Self, CustodyError> {
        let module = config.module.display().to_string();
        let context = Pkcs11::new(&config.module)
            .map_err(|e| refused(format!("cannot load the PKCS#11 module {module}: {e}")))?;
        // C_Initialize is not safe against itself or any other call.
        let _alone = MODULE
            .write()
            .map_err(|_| unavailable("the module lock is poisoned".into()))?;
        initialize(&context, &module)?;
        let slot = find_slot(&context, &module, &config.token_label)?;
        Ok(Self {
            context,
            module,
            slot: Mutex::new(slot),
            label: config.token_label.clone(),
            pin,
            idle: Mutex::new(Vec::new()),
            reloaded: Mutex::new(None),
        })
    }

    /// Reload the module, so that a token put back is found again (a
    /// module may keep a pulled token invalid until then), at most every
    /// [`RELOAD_EVERY`]. It waits for every PKCS#11 call of the process
    /// to finish ([`MODULE`]); other sessions of the process are closed by
    /// it and reopened when next used.
    fn reload(&self) -> Result<bool, CustodyError> {
        let _alone = MODULE
            .write()
            .map_err(|_| unavailable("the module lock is poisoned".into()))?;
        {
            let Ok(mut last) = self.reloaded.lock() else {
                return Ok(false);
            };
            if last.is_some_and(|at| at.elapsed() < RELOAD_EVERY) {
                return Ok(false);
            }
            *last = Some(Instant::now());
        }
        if let Ok(mut idle) = self.idle.lock() {
            idle.clear();
        }
        let _ = self.context.clone().finalize();
        initialize(&self.context, &self.module)?;
        let slot = find_slot(&self.context, &self.module, &self.label)
            .map_err(|e| unavailable(e.to_string()))?;
        if let Ok(mut current) = self.slot.lock() {
            *current = slot;
        }
        tracing::warn!(token = %self.label, "reloaded the PKCS#11 module to find the token again");
        Ok(true)
    }

    /// Run `f` with a session: an idle one, or a new one logged in. The
    /// session goes back to the pool unless the token failed it.
    ///
    /// An idle session the token closed meanwhile (it was pulled, or the
    /// module was initialised again in this process) is dropped and the
    /// call made once more on a new one. When no session opens because
    /// the token seems gone, the module is reloaded and the call tried
    /// once more.
    fn with_session<T>(
        &self,
        f: impl Fn(&Session) -> cryptoki::error::Result<T>,
    ) -> Result<T, CustodyError> {
        match self.attempt(&f) {
            Err(Attempt::NoSession(_)) if self.reload()? => {
                self.attempt(&f).map_err(|a| self.failed(a.error()))
            }
            other => other.map_err(|a| self.failed(a.error())),
        }
    }

    /// One try of [`Inner::with_session`], every call under the shared
    /// hold of [`MODULE`].
    fn attempt<T>(
        &self,
        f: &impl Fn(&Session) -> cryptoki::error::Result<T>,
    ) -> Result<T, Attempt> {
        let _shared = MODULE.read().map_err(|_| {
            Attempt::NoSession(CkError::Pkcs11(
                RvError::GeneralError,
                Function::OpenSession,
            ))
        })?;
        let idle = self.idle.lock().ok().and_then(|mut pool| pool.pop());
        let fresh = || match self.open_session() {
            Err(CkError::Pkcs11(rv, function)) if transient(rv) => {
                Err(Attempt::NoSession(CkError::Pkcs11(rv, function)))
            }
            opened => opened.map_err(Attempt::Failed),
        };
        let (value, session) = match idle {
            Some(session) => match f(&session) {
                Err(CkError::Pkcs11(rv, _)) if session_gone(rv) => {
                    drop(session);
                    let session = fresh()?;
                    (f(&session).map_err(Attempt::Failed)?, session)
                }
                other => (other.map_err(Attempt::Failed)?, session),
            },
            None => {
                let session = fresh()?;
                (f(&session).map_err(Attempt::Failed)?, session)
            }
        };
        if let Ok(mut pool) = self.idle.lock() {
            pool.push(session);
        }
        Ok(value)
    }

    fn open_session(&self) -> cryptoki::error::Result<Session> {
        let slot = *self
            .slot
            .lock()
            .map_err(|_| CkError::Pkcs11(RvError::GeneralError, Function::OpenSession))?;
        let session = self.context.open_rw_session(slot)?;
        match session.login(UserType::User, Some(&self.pin)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(session),
            Err(e) => Err(e),
        }
    }

    /// What a failure means: the token gone or failing is worth waiting
    /// for; a refused PIN or a refused operation needs someone.
    fn failed(&self, error: &CkError) -> CustodyError {
        // The return value's name (CKR_...), not its paragraph of text.
        let message = match error {
            CkError::Pkcs11(rv, function) => {
                format!("token {:?}: {function:?} failed: {rv:?}", self.label)
            }
            other => format!("token {:?}: {other}", self.label),
        };
        match error {
            CkError::Pkcs11(rv, _) if transient(*rv) => unavailable(message),
            _ => refused(message),
        }
    }
}

/// The session is no longer usable, though the token may be.
fn session_gone(rv: RvError) -> bool {
    matches!(
        rv,
        RvError::SessionHandleInvalid
            | RvError::SessionClosed
            | RvError::UserNotLoggedIn
            | RvError::CryptokiNotInitialized
    )
}

/// Failures a token recovers from: removed, failing, or its objects and
/// sessions gone with it.
fn transient(rv: RvError) -> bool {
    matches!(
        rv,
        RvError::TokenNotPresent
            | RvError::TokenNotRecognized
            | RvError::DeviceRemoved
            | RvError::DeviceError
            | RvError::DeviceMemory
            | RvError::SessionClosed
            | RvError::SessionHandleInvalid
            | RvError::SessionCount
            | RvError::SlotIdInvalid
            | RvError::KeyHandleInvalid
            | RvError::ObjectHandleInvalid
            | RvError::UserNotLoggedIn
            | RvError::CryptokiNotInitialized
            | RvError::FunctionFailed
            | RvError::GeneralError
    )
}

/// `C_Initialize`, which another start in this process may have done.
fn initialize(context: &Pkcs11, module: &str) -> Result<(), CustodyError> {
    match context.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => Ok(()),
        Err(e) => Err(refused(format!("{module} failed to initialise: {e}"))),
    }
}

/// The slot whose token is labelled `label`.
fn find_slot(context: &Pkcs11, module: &str, label: &str) -> Result<Slot, CustodyError> {
    let slots = context
        .get_slots_with_token()
        .map_err(|e| refused(format!("{module} lists no slots: {e}")))?;
    slots
        .into_iter()
        .find(|s| {
            context
                .get_token_info(*s)
                .is_ok_and(|t| t.label().trim_end() == label)
        })
        .ok_or_else(|| refused(format!("no token labelled {label:?} in {module}")))
}

fn unavailable(message: String) -> CustodyError {
    CustodyError::Unavailable {
        backend: BACKEND,
        message,
        retry_after: RETRY_AFTER,
        source: None,
    }
}

fn refused(message: String) -> CustodyError {
    CustodyError::Refused {
        backend: BACKEND,
        message,
    }
}

/// `f` on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, CustodyError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| refused(format!("the PKCS#11 call did not finish: {e}")))
}

async fn read_pin(source: &PinSource) -> Result<AuthPin, CustodyError> {
    let pin = match source {
        PinSource::File(path) => tokio::fs::read_to_string(path)
            .await
            .map_err(|e| refused(format!("cannot read the PIN file {}: {e}", path.display())))?,
        PinSource::Env(name) => std::env::var(name)
            .map_err(|_| refused(format!("the PIN variable {name} is not set")))?,
    };
    let pin = zeroize::Zeroizing::new(pin);
    Ok(AuthPin::new(pin.trim_end().into()))
}

#[async_trait]
impl Custody for Token {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn key(
        &self,
        name: &str,
        algorithm: CustodyAlgorithm,
    ) -> Result<Arc<dyn CustodyKey>, CustodyError> {
        let (inner, label) = (self.inner.clone(), name.to_owned());
        let key = blocking(move || TokenKey::find_or_make(inner, &label, algorithm)).await??;
        Ok(Arc::new(key))
    }

    /// The token is present and a session opens (or an idle one answers).
    async fn health(&self) -> Result<(), CustodyError> {
        let inner = self.inner.clone();
        blocking(move || inner.with_session(|s| s.get_session_info().map(drop))).await?
    }

    /// Both halves of the pair labelled `name`, whichever are there.
    async fn destroy(&self, name: &str) -> Result<(), CustodyError> {
        let (inner, label) = (self.inner.clone(), name.to_owned());
        blocking(move || {
            inner.with_session(|s| {
                for class in [ObjectClass::PRIVATE_KEY, ObjectClass::PUBLIC_KEY] {
                    if let Some(object) = find(s, class, &label)? {
                        s.destroy_object(object)?;
                    }
                }
                Ok(())
            })
        })
        .await?
    }
}

/// A key on the token, found by its label.
struct TokenKey {
    inner: Arc<Inner>,
    label: String,
    algorithm: CustodyAlgorithm,
    point: Vec<u8>,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKey")
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

impl TokenKey {
    /// The key labelled `label`, made on the token (sensitive, never
    /// extractable) when there is none; refused when it could leave the
    /// token or is on another curve.
    fn find_or_make(
        inner: Arc<Inner>,
        label: &str,
        algorithm: CustodyAlgorithm,
    ) -> Result<Self, CustodyError> {
        inner.with_session(|s| {
            if find(s, ObjectClass::PRIVATE_KEY, label)?.is_none() {
                make(s, label, algorithm)?;
                tracing::info!(
                    label,
                    algorithm = algorithm.name(),
                    "made a new key on the token"
                );
            }
            Ok(())
        })?;
        let Some(Pair { held, public }) = inner.with_session(|s| read_pair(s, label))? else {
            return Err(refused(format!(
                "token {:?} has no private and public key labelled {label:?}",
                inner.label
            )));
        };
        let stays = held.iter().all(|a| match a {
            Attribute::Sensitive(s) => *s,
            Attribute::Extractable(e) => !*e,
            _ => true,
        });
        if !stays {
            return Err(refused(format!(
                "the key {label:?} on token {:?} can leave it (CKA_SENSITIVE false or CKA_EXTRACTABLE true): a CA key in custody must not; make a new one",
                inner.label
            )));
        }
        let point = public.key_of(algorithm).map_err(|why| {
            refused(format!(
                "the key {label:?} on token {:?} {why}: give meshca another label",
                inner.label
            ))
        })?;
        Ok(Self {
            point,
            inner,
            label: label.to_owned(),
            algorithm,
        })
    }
}

/// What meshca reads of a key pair on the token.
struct Pair {
    /// The private key's CKA_SENSITIVE and CKA_EXTRACTABLE.
    held: Vec<Attribute>,
    /// The public key.
    public: PublicHalf,
}

/// A public key as the token holds it.
enum PublicHalf {
    /// CKA_EC_POINT and CKA_EC_PARAMS.
    Ec { point: Vec<u8>, params: Vec<u8> },
    /// CKA_MODULUS and CKA_PUBLIC_EXPONENT.
    Rsa { modulus: Vec<u8>, exponent: Vec<u8> },
    /// A key of another type.
    Other(KeyType),
}

impl PublicHalf {
    /// The public key as X.509 carries it, when it is a key of
    /// `algorithm`; what it is otherwise.
    fn key_of(&self, algorithm: CustodyAlgorithm) -> Result<Vec<u8>, String> {
        let not = || format!("is not {}", algorithm.name());
        match (self, algorithm.rsa_bits()) {
            (Self::Ec { point, params }, None) if *params == curve_oid(algorithm) => {
                unwrap_octet_string(point).ok_or_else(|| "has a malformed CKA_EC_POINT".into())
            }
            (Self::Rsa { modulus, exponent }, Some(bits)) => {
                let significant = modulus.iter().skip_while(|b| **b == 0).count();
                match u32::try_from(significant * 8) == Ok(bits) {
                    true => Ok(meshca_provider::crypto::custody::rsa_public_key(
                        modulus, exponent,
                    )),
                    false => Err(format!("{} (its modulus has {significant} bytes)", not())),
                }
            }
            (Self::Other(kind), _) => Err(format!("{} (CKA_KEY_TYPE {kind})", not())),
            _ => Err(not()),
        }
    }
}

/// The pair labelled `label`, when both halves are on the token.
fn read_pair(session: &Session, label: &str) -> cryptoki::error::Result<Option<Pair>> {
    let private = find(session, ObjectClass::PRIVATE_KEY, label)?;
    let public = find(session, ObjectClass::PUBLIC_KEY, label)?;
    let (Some(private), Some(public)) = (private, public) else {
        return Ok(None);
    };
    let held = session.get_attributes(
        private,
        &[AttributeType::Sensitive, AttributeType::Extractable],
    )?;
    let kind = match session
        .get_attributes(public, &[AttributeType::KeyType])?
        .first()
    {
        Some(Attribute::KeyType(kind)) => *kind,
        _ => KeyType::GENERIC_SECRET,
    };
    let public = if kind == KeyType::EC {
        let ec =
            session.get_attributes(public, &[AttributeType::EcPoint, AttributeType::EcParams])?;
        PublicHalf::Ec {
            point: attribute_bytes(&ec, 0),
            params: attribute_bytes(&ec, 1),
        }
    } else if kind == KeyType::RSA {
        let rsa = session.get_attributes(
            public,
            &[AttributeType::Modulus, AttributeType::PublicExponent],
        )?;
        PublicHalf::Rsa {
            modulus: attribute_bytes(&rsa, 0),
            exponent: attribute_bytes(&rsa, 1),
        }
    } else {
        PublicHalf::Other(kind)
    };
    Ok(Some(Pair { held, public }))
}

/// The one object of `class` labelled `label`.
fn find(
    session: &Session,
    class: ObjectClass,
    label: &str,
) -> cryptoki::error::Result<Option<ObjectHandle>> {
    let found = session.find_objects(&[
        Attribute::Class(class),
        Attribute::Label(label.as_bytes().to_vec()),
    ])?;
    Ok(found.first().copied())
}

/// A new key pair labelled `label` (EC on the algorithm's curve, or RSA
/// with its modulus and the exponent 65537), the private half sensitive
/// and never extractable.
fn make(
    session: &Session,
    label: &str,
    algorithm: CustodyAlgorithm,
) -> cryptoki::error::Result<()> {
    let label = label.as_bytes().to_vec();
    let (mechanism, shape, kind) = match algorithm.rsa_bits() {
        None => (
            Mechanism::EccKeyPairGen,
            vec![Attribute::EcParams(curve_oid(algorithm))],
            KeyType::EC,
        ),
        Some(bits) => (
            Mechanism::RsaPkcsKeyPairGen,
            vec![
                Attribute::ModulusBits(u64::from(bits).into()),
                Attribute::PublicExponent(vec![0x01, 0x00, 0x01]),
            ],
            KeyType::RSA,
        ),
    };
    let mut public = vec![
        Attribute::Token(true),
        Attribute::Verify(true),
        Attribute::Label(label.clone()),
    ];
    public.extend(shape);
    let mut private = vec![
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
        Attribute::KeyType(kind),
        Attribute::Label(label),
    ];
    if kind == KeyType::RSA {
        // A CA key signs; an RSA key would otherwise decrypt and unwrap too.
        private.extend([Attribute::Decrypt(false), Attribute::Unwrap(false)]);
        public.extend([Attribute::Encrypt(false), Attribute::Wrap(false)]);
    }
    session
        .generate_key_pair(&mechanism, &public, &private)
        .map(drop)
}

/// The bytes of attribute `i` of `attributes` (EC point or parameters).
fn attribute_bytes(attributes: &[Attribute], i: usize) -> Vec<u8> {
    match attributes.get(i) {
        Some(
            Attribute::EcPoint(b)
            | Attribute::EcParams(b)
            | Attribute::Modulus(b)
            | Attribute::PublicExponent(b),
        ) => b.clone(),
        _ => Vec::new(),
    }
}

/// The named curve's OID, DER-encoded, as CKA_EC_PARAMS holds it (empty
/// for RSA).
fn curve_oid(algorithm: CustodyAlgorithm) -> Vec<u8> {
    match algorithm {
        CustodyAlgorithm::Rsa2048 | CustodyAlgorithm::Rsa3072 | CustodyAlgorithm::Rsa4096 => {
            Vec::new()
        }
        // 1.2.840.10045.3.1.7 (prime256v1)
        CustodyAlgorithm::EcdsaP256 => {
            vec![0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07]
        }
        // 1.3.132.0.34 (secp384r1)
        CustodyAlgorithm::EcdsaP384 => vec![0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22],
    }
}

/// CKA_EC_POINT is the point wrapped in a DER OCTET STRING.
fn unwrap_octet_string(der: &[u8]) -> Option<Vec<u8>> {
    let (&tag, rest) = der.split_first()?;
    let (&len, rest) = rest.split_first()?;
    let (len, rest) = match len {
        n if n < 0x80 => (usize::from(n), rest),
        0x81 => {
            let (&n, rest) = rest.split_first()?;
            (usize::from(n), rest)
        }
        _ => return None,
    };
    (tag == 0x04 && rest.len() == len && rest.first() == Some(&0x04)).then(|| rest.to_vec())
}

#[async_trait]
impl CustodyKey for TokenKey {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn name(&self) -> &str {
        &self.label
    }

    fn algorithm(&self) -> CustodyAlgorithm {
        self.algorithm
    }

    fn public_key(&self) -> &[u8] {
        &self.point
    }

    /// ECDSA: CKM_ECDSA over the message's digest, the token's `r || s`
    /// made the DER signature X.509 carries. RSA: CKM_SHA256_RSA_PKCS over
    /// the message, whose signature X.509 carries as it is. The key is
    /// looked up by label per call: handles do not outlive a token that
    /// was pulled.
    async fn sign(&self, message: &[u8]) -> Result<Vec<u8>, CustodyError> {
        let rsa = self.algorithm.rsa_bits().is_some();
        let input = match rsa {
            true => message.to_vec(),
            false => self.algorithm.digest(message),
        };
        let (inner, label) = (self.inner.clone(), self.label.clone());
        let raw = blocking(move || {
            inner.with_session(|s| {
                let key = find(s, ObjectClass::PRIVATE_KEY, &label)?
                    .ok_or(CkError::Pkcs11(RvError::KeyHandleInvalid, Function::Sign))?;
                let mechanism = match rsa {
                    true => Mechanism::Sha256RsaPkcs,
                    false => Mechanism::Ecdsa,
                };
                s.sign(&mechanism, key, &input)
            })
        })
        .await??;
        if rsa {
            return Ok(raw);
        }
        der_signature(&raw).ok_or_else(|| {
            refused(format!(
                "the token's signature with {:?} is not r || s of {} bytes",
                self.label,
                raw.len()
            ))
        })
    }
}

/// `r || s` (each half the length) as a DER ECDSA-Sig-Value.
fn der_signature(raw: &[u8]) -> Option<Vec<u8>> {
    if raw.is_empty() || !raw.len().is_multiple_of(2) || raw.len() > 132 {
        return None;
    }
    let (r, s) = raw.split_at(raw.len() / 2);
    let mut body = Vec::with_capacity(raw.len() + 6);
    for int in [r, s] {
        let int = {
            let skip = int
                .iter()
                .take_while(|b| **b == 0)
                .count()
                .min(int.len() - 1);
            &int[skip..]
        };
        let pad = int[0] & 0x80 != 0;
        body.push(0x02);
        body.push(u8::try_from(int.len() + usize::from(pad)).ok()?);
        if pad {
            body.push(0);
        }
        body.extend_from_slice(int);
    }
    let mut out = vec![0x30];
    match u8::try_from(body.len()).ok()? {
        n if n < 0x80 => out.push(n),
        n => out.extend_from_slice(&[0x81, n]),
    }
    out.extend_from_slice(&body);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_signatures_become_der() {
        // Leading zeros dropped, a high bit padded.
        let mut raw = vec![0u8; 64];
        raw[0] = 0;
        raw[1] = 0x80;
        raw[63] = 7;
        let der = der_signature(&raw).expect("der");
        assert_eq!(&der[..4], &[0x30, der.len() as u8 - 2, 0x02, 32]);
        assert_eq!(&der[4..6], &[0x00, 0x80]);
        assert_eq!(&der[der.len() - 3..], &[0x02, 0x01, 7]);
        let p384 = der_signature(&[0xff; 96]).expect("der");
        assert_eq!(&p384[..4], &[0x30, 102, 0x02, 49]);
        let p521 = der_signature(&[0xff; 132]).expect("der");
        assert_eq!(&p521[..3], &[0x30, 0x81, 138]);
        assert!(der_signature(&[1; 63]).is_none());
        assert!(der_signature(&[]).is_none());
    }

    #[test]
    fn the_ec_point_is_unwrapped_from_its_octet_string() {
        let mut point = vec![0x04, 65, 0x04];
        point.extend_from_slice(&[9; 64]);
        assert_eq!(unwrap_octet_string(&point).expect("point").len(), 65);
        let mut long = vec![0x04, 0x81, 97, 0x04];
        long.extend_from_slice(&[9; 96]);
        assert_eq!(unwrap_octet_string(&long).expect("point").len(), 97);
        assert!(unwrap_octet_string(&[0x04, 2, 0x02, 1]).is_none());
        assert!(unwrap_octet_string(&[0x04, 9, 0x04]).is_none());
    }

    #[test]
    fn a_public_key_of_another_family_or_size_is_named() {
        let rsa = PublicHalf::Rsa {
            modulus: vec![0xc0; 256],
            exponent: vec![1, 0, 1],
        };
        let der = rsa.key_of(CustodyAlgorithm::Rsa2048).expect("2048 bits");
        assert_eq!(
            &der[..4],
            &[0x30, 0x82, 0x01, 0x0a],
            "SEQUENCE of 266 bytes"
        );
        let e = rsa.key_of(CustodyAlgorithm::Rsa3072).expect_err("not 3072");
        assert!(e.contains("rsa-3072") && e.contains("256 bytes"), "{e}");
        assert!(rsa.key_of(CustodyAlgorithm::EcdsaP256).is_err());
        let ec = PublicHalf::Ec {
            point: vec![0x04, 0x03, 0x04, 0x01, 0x02],
            params: curve_oid(CustodyAlgorithm::EcdsaP256),
        };
        assert_eq!(
            ec.key_of(CustodyAlgorithm::EcdsaP256),
            Ok(vec![0x04, 0x01, 0x02])
        );
        assert!(ec.key_of(CustodyAlgorithm::EcdsaP384).is_err());
        assert!(ec.key_of(CustodyAlgorithm::Rsa2048).is_err());
        let other = PublicHalf::Other(KeyType::DSA);
        assert!(other
            .key_of(CustodyAlgorithm::EcdsaP256)
            .expect_err("DSA")
            .contains("CKA_KEY_TYPE"));
    }
}
