//! The Connect protocol as envd speaks it to E2B's SDKs: JSON only (the SDKs set
//! `useBinaryFormat: false`), no compression (both SDKs disable it).
//!
//! - Unary: `POST /<package>.<Service>/<Method>`, `Content-Type: application/json`, the
//!   request message as the body; the answer is the response message with 200, or an error
//!   `{"code": "not_found", "message": "…"}` with the HTTP status of its code.
//! - Server streaming: `Content-Type: application/connect+json`; the request body and every
//!   answer are *envelopes* — one flag byte, a big-endian u32 length, then that many bytes of
//!   JSON. The stream ends with an envelope flagged [`END_STREAM`] whose JSON is `{}` or
//!   `{"error": {"code", "message"}}`; the HTTP status stays 200 even for errors.
//!
//! The envelope framing is `tokio_util`'s [`LengthDelimitedCodec`] configured for the
//! 5-byte header (length field at offset 1, four bytes, big-endian), not a parser of ours.
//! See <https://connectrpc.com/docs/protocol/>.

use axum::body::Bytes;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, BytesMut};
use futures_util::Stream;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

/// The content type of unary JSON calls.
pub const UNARY_JSON: &str = "application/json";
/// The content type of streaming JSON calls.
pub const STREAM_JSON: &str = "application/connect+json";
/// Envelope flag: the payload is compressed (never accepted: the SDKs do not compress).
pub const COMPRESSED: u8 = 0x01;
/// Envelope flag: the end-of-stream message.
pub const END_STREAM: u8 = 0x02;
/// Header bytes before an envelope's payload: the flag and the length.
const HEADER_LEN: usize = 5;

/// A Connect error: one of the protocol's codes and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectError {
    /// The code, as Connect spells it (`not_found`, `invalid_argument`, …).
    pub code: &'static str,
    /// What went wrong, for the client.
    pub message: String,
}

impl ConnectError {
    /// An error of `code`.
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// `invalid_argument`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new("invalid_argument", message)
    }

    /// `not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new("not_found", message)
    }

    /// `unimplemented`.
    pub fn unimplemented(message: impl Into<String>) -> Self {
        Self::new("unimplemented", message)
    }

    /// `internal` (the message must not carry host details).
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new("internal", message)
    }

    /// The HTTP status a unary answer carries for this code (the protocol's table).
    pub fn status(&self) -> StatusCode {
        match self.code {
            "canceled" => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
            "invalid_argument" | "failed_precondition" | "out_of_range" => StatusCode::BAD_REQUEST,
            "deadline_exceeded" => StatusCode::GATEWAY_TIMEOUT,
            "not_found" => StatusCode::NOT_FOUND,
            "already_exists" | "aborted" => StatusCode::CONFLICT,
            "permission_denied" => StatusCode::FORBIDDEN,
            "resource_exhausted" => StatusCode::TOO_MANY_REQUESTS,
            "unimplemented" => StatusCode::NOT_IMPLEMENTED,
            "unavailable" => StatusCode::SERVICE_UNAVAILABLE,
            "unauthenticated" => StatusCode::UNAUTHORIZED,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn body(&self) -> serde_json::Value {
        serde_json::json!({"code": self.code, "message": self.message})
    }

    /// The answer to a unary call that failed.
    pub fn unary(&self) -> Response {
        let mut resp = (self.status(), axum::Json(self.body())).into_response();
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(UNARY_JSON));
        resp
    }

    /// The answer to a streaming call that failed before its first message: a stream of
    /// only the end-of-stream envelope, carrying the error.
    pub fn stream(&self) -> Response {
        let frame = end_frame(Some(self));
        stream_response(futures_util::stream::iter([frame]))
    }
}

/// The codec of envelopes: `flag | u32 BE length | payload`, `max` bytes of payload at most.
/// Frames come out whole (`num_skip(0)`: the header kept, to read the flag); with the header
/// kept, the codec counts the length from the frame's start, so the header's five bytes are
/// added to it (`length_adjustment`).
fn codec(max: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_offset(1)
        .length_field_length(4)
        .length_adjustment(HEADER_LEN as isize)
        .big_endian()
        .num_skip(0)
        .max_frame_length(max)
        .new_codec()
}

/// Decode the single request message of a streaming call: exactly one uncompressed
/// envelope, nothing after it.
pub fn decode_request<T: DeserializeOwned>(body: &[u8], max: usize) -> Result<T, ConnectError> {
    let mut buf = BytesMut::from(body);
    let frame = codec(max)
        .decode(&mut buf)
        .map_err(|_| {
            ConnectError::new(
                "resource_exhausted",
                format!("the request envelope's length is more than {max} bytes"),
            )
        })?
        .ok_or_else(|| {
            ConnectError::invalid(
                "the request is not a complete Connect envelope (5-byte header, then the \
                 message)",
            )
        })?;
    if !buf.is_empty() {
        return Err(ConnectError::invalid(
            "a server-streaming call takes exactly one request envelope",
        ));
    }
    let flag = frame[0];
    if flag & COMPRESSED != 0 {
        return Err(ConnectError::unimplemented(
            "compressed envelopes are not accepted; send them uncompressed",
        ));
    }
    if flag != 0 {
        return Err(ConnectError::invalid(format!(
            "unexpected envelope flag {flag:#04x} on a request"
        )));
    }
    decode_message(&frame[HEADER_LEN..])
}

/// Decode a JSON message (a unary body or an envelope's payload). An empty body is the
/// empty message, as Connect allows.
pub fn decode_message<T: DeserializeOwned>(payload: &[u8]) -> Result<T, ConnectError> {
    let payload = if payload.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        payload
    };
    serde_json::from_slice(payload)
        .map_err(|e| ConnectError::invalid(format!("the request message is not valid: {e}")))
}

fn envelope(flag: u8, payload: Vec<u8>) -> Bytes {
    let mut dst = BytesMut::with_capacity(HEADER_LEN + payload.len());
    dst.put_u8(flag);
    // The encoder writes the length then the payload: after the flag, that is the header.
    // It fails only for a payload longer than the maximum, set here to what u32 can say.
    let mut enc = LengthDelimitedCodec::builder()
        .length_field_length(4)
        .big_endian()
        .max_frame_length(u32::MAX as usize)
        .new_codec();
    if enc.encode(Bytes::from(payload), &mut dst).is_err() {
        let mut dst = BytesMut::new();
        dst.put_u8(END_STREAM);
        let body = br#"{"error":{"code":"resource_exhausted","message":"message too large"}}"#;
        dst.put_u32(body.len() as u32);
        dst.put_slice(body);
        return dst.freeze();
    }
    dst.freeze()
}

/// A data envelope carrying `msg`.
pub fn data_frame<T: Serialize>(msg: &T) -> Bytes {
    // Serializing our own message types cannot fail (no maps with non-string keys).
    envelope(
        0,
        serde_json::to_vec(msg).unwrap_or_else(|_| b"{}".to_vec()),
    )
}

/// The end-of-stream envelope: `{}` or the error.
pub fn end_frame(error: Option<&ConnectError>) -> Bytes {
    let body = match error {
        None => serde_json::json!({}),
        Some(e) => serde_json::json!({"error": e.body()}),
    };
    envelope(END_STREAM, body.to_string().into_bytes())
}

/// A streaming answer: status 200, `application/connect+json`, the frames as they come.
pub fn stream_response<S>(frames: S) -> Response
where
    S: Stream<Item = Bytes> + Send + 'static,
{
    use futures_util::StreamExt;
    let body = axum::body::Body::from_stream(frames.map(Ok::<_, std::convert::Infallible>));
    let mut resp = Response::new(body);
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(STREAM_JSON));
    resp
}

/// A unary answer: status 200, `application/json`, the message.
pub fn unary_ok<T: Serialize>(msg: &T) -> Response {
    let mut resp = axum::Json(msg).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(UNARY_JSON));
    resp
}

/// The request's content type without parameters, lower case.
pub fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct Msg {
        a: u32,
    }

    fn raw(flag: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![flag];
        v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn one_envelope_decodes() {
        let m: Msg = decode_request(&raw(0, br#"{"a":7}"#), 1024).unwrap();
        assert_eq!(m, Msg { a: 7 });
    }

    #[test]
    fn bad_envelopes_are_refused() {
        // Truncated header, truncated payload, trailing bytes, compression, huge length.
        assert_eq!(
            decode_request::<Msg>(&[0, 0, 0], 1024).unwrap_err().code,
            "invalid_argument"
        );
        let mut cut = raw(0, br#"{"a":7}"#);
        cut.pop();
        assert_eq!(
            decode_request::<Msg>(&cut, 1024).unwrap_err().code,
            "invalid_argument"
        );
        let mut two = raw(0, br#"{"a":7}"#);
        two.extend(raw(0, br#"{"a":8}"#));
        assert_eq!(
            decode_request::<Msg>(&two, 1024).unwrap_err().code,
            "invalid_argument"
        );
        assert_eq!(
            decode_request::<Msg>(&raw(COMPRESSED, b"x"), 1024)
                .unwrap_err()
                .code,
            "unimplemented"
        );
        let huge = [0u8, 0xff, 0xff, 0xff, 0xff, b'{'];
        assert_eq!(
            decode_request::<Msg>(&huge, 1024).unwrap_err().code,
            "resource_exhausted"
        );
        assert_eq!(
            decode_request::<Msg>(&raw(0, b"not json"), 1024)
                .unwrap_err()
                .code,
            "invalid_argument"
        );
    }

    #[test]
    fn frames_round_trip_through_the_codec() {
        let f = data_frame(&serde_json::json!({"x": 1}));
        assert_eq!(f[0], 0);
        assert_eq!(
            u32::from_be_bytes([f[1], f[2], f[3], f[4]]) as usize,
            f.len() - 5
        );
        let end = end_frame(Some(&ConnectError::not_found("gone")));
        assert_eq!(end[0], END_STREAM);
        let v: serde_json::Value = serde_json::from_slice(&end[5..]).unwrap();
        assert_eq!(v["error"]["code"], "not_found");
        assert_eq!(&end_frame(None)[5..], b"{}");
    }
}
