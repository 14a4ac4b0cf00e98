//! Istio's messages with prost, as tonic's own codec reads them, except
//! that a request that does not parse is the caller's mistake
//! (`INVALID_ARGUMENT`, which no client retries), not the server's
//! (`INTERNAL`, tonic's default). The generated service uses it through
//! `build.rs` (`codec_path`).

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::{Code, Status};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// The codec of `istio.v1.auth.IstioCertificateService`.
#[derive(Debug)]
pub struct StrictCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for StrictCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for StrictCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = Strict<ProstDecoder<U>>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::default().encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        Strict(ProstCodec::<T, U>::default().decoder())
    }
}

/// A decoder whose parse failures are `INVALID_ARGUMENT`.
#[derive(Debug)]
pub struct Strict<D>(D);

impl<D: Decoder<Error = Status>> Decoder for Strict<D> {
    type Item = D::Item;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        self.0.decode(buf).map_err(|status| match status.code() {
            Code::Internal => Status::invalid_argument(format!(
                "the request is not a valid IstioCertificateRequest: {}",
                status.message()
            )),
            _ => status,
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}
