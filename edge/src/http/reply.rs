//! Responses: JSON bodies, the error shape, and an engine reply (the JSON a
//! WebSocket client would get) turned into an HTTP response.

use serde_json::{Map, Value};

/// A refused request: `{"error":{"code","message"}}` with `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    /// When to retry (`Retry-After`, and `retry_ms` in the body).
    pub retry_ms: Option<u64>,
    /// The methods a 405 allows.
    pub allow: Option<&'static str>,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: &str) -> Self {
        Self {
            status,
            code,
            message: message.to_owned(),
            retry_ms: None,
            allow: None,
        }
    }

    pub fn bad_request(message: &str) -> Self {
        Self::new(400, "bad_request", message)
    }

    pub fn unauthorized(message: &str) -> Self {
        Self::new(401, "unauthorized", message)
    }

    pub fn forbidden(message: &str) -> Self {
        Self::new(403, "forbidden", message)
    }

    pub fn not_found(path: &str) -> Self {
        let shown: String = path.chars().take(200).collect();
        Self::new(404, "not_found", &format!("no such endpoint: {shown} (see /api/openapi.json)"))
    }

    pub fn method(allow: &'static str) -> Self {
        Self {
            allow: Some(allow),
            ..Self::new(405, "method_not_allowed", &format!("method not allowed here; allowed: {allow}"))
        }
    }

    pub fn unavailable(message: &str, retry_ms: u64) -> Self {
        Self {
            retry_ms: Some(retry_ms),
            ..Self::new(503, "unavailable", message)
        }
    }

    /// The response that carries this error.
    pub fn response(&self) -> Response {
        let mut error = Map::new();
        error.insert("code".into(), self.code.into());
        error.insert("message".into(), self.message.clone().into());
        if let Some(ms) = self.retry_ms {
            error.insert("retry_ms".into(), ms.into());
        }
        let mut r = json_response(
            self.status,
            &Value::Object(Map::from_iter([("error".to_owned(), Value::Object(error))])),
        );
        if let Some(ms) = self.retry_ms {
            r.headers.push(("Retry-After", ms.div_ceil(1000).max(1).to_string()));
        }
        if self.status == 401 {
            r.headers.push(("WWW-Authenticate", "Bearer, apikey".to_owned()));
        }
        if let Some(allow) = self.allow {
            r.headers.push(("Allow", allow.to_owned()));
        }
        r
    }
}

/// A complete response, before its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: bytes::Bytes,
}

impl Response {
    /// The response bytes; `close` says the connection ends after it.
    pub fn to_bytes(&self, close: bool) -> Vec<u8> {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nX-Content-Type-Options: nosniff\r\n",
            self.status,
            crate::ws::handshake::reason(self.status),
            self.content_type,
            self.body.len()
        );
        for (k, v) in &self.headers {
            head.push_str(k);
            head.push_str(": ");
            head.push_str(v);
            head.push_str("\r\n");
        }
        head.push_str(if close {
            "Connection: close\r\n\r\n"
        } else {
            "Connection: keep-alive\r\n\r\n"
        });
        let mut out = head.into_bytes();
        out.extend_from_slice(&self.body);
        out
    }
}

/// A JSON response (never cached).
pub fn json_response(status: u16, body: &Value) -> Response {
    Response {
        status,
        content_type: "application/json",
        headers: vec![("Cache-Control", "no-store".to_owned())],
        body: body.to_string().into(),
    }
}

/// The HTTP status of a protocol error code.
fn status_of(code: &str) -> u16 {
    match code {
        "bad_request" => 400,
        "unauthorized" => 401,
        "forbidden" => 403,
        "not_found" => 404,
        "too_large" => 413,
        "rate_limited" => 429,
        "overloaded" | "unavailable" => 503,
        _ => 500,
    }
}

/// The response for an engine reply (a protocol frame: `ack`, `history`, `presence`, or
/// `error`): the frame without its `type` and `id`, or its error with the code's status.
pub fn from_ws_reply(frame: &[u8]) -> Response {
    let Ok(Value::Object(mut obj)) = serde_json::from_slice::<Value>(frame) else {
        return ApiError::new(500, "internal", "the engine's reply was not a JSON object").response();
    };
    let kind = obj.remove("type");
    obj.remove("id");
    if kind.as_ref().and_then(Value::as_str) != Some("error") {
        return json_response(200, &Value::Object(obj));
    }
    let code = obj.get("code").and_then(Value::as_str).unwrap_or("internal");
    let status = status_of(code);
    let code: &'static str = match status {
        400 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        413 => "too_large",
        429 => "rate_limited",
        503 if code == "overloaded" => "overloaded",
        503 => "unavailable",
        _ => "internal",
    };
    let message = obj.get("message").and_then(Value::as_str).unwrap_or("");
    ApiError {
        retry_ms: obj.get("retry_ms").and_then(Value::as_u64),
        ..ApiError::new(status, code, message)
    }
    .response()
}
