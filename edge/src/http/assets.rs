//! The web page's files, embedded in the binary (`edge/web/`, no build step), and the
//! OpenAPI document.

use super::Response;

/// One embedded file.
#[derive(Debug, PartialEq, Eq)]
pub struct Asset {
    pub path: &'static str,
    pub content_type: &'static str,
    pub body: &'static [u8],
}

static ASSETS: [Asset; 3] = [
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("../../web/index.html"),
    },
    Asset {
        path: "/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../web/app.js"),
    },
    Asset {
        path: "/style.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../web/style.css"),
    },
];

/// The OpenAPI 3.1 document of the HTTP API.
pub static OPENAPI: &str = include_str!("openapi.json");

/// The embedded file served at `path` (`/index.html` is `/`).
pub fn asset(path: &str) -> Option<&'static Asset> {
    let path = if path == "/index.html" { "/" } else { path };
    ASSETS.iter().find(|a| a.path == path)
}

/// Only the page's own origin may run scripts, load styles or open sockets; the page may
/// not be framed (clickjacking).
const PAGE_CSP: &str =
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self' ws: wss:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

impl Asset {
    /// The response carrying this file.
    pub fn response(&self) -> Response {
        Response {
            status: 200,
            content_type: self.content_type,
            headers: vec![
                ("Content-Security-Policy", PAGE_CSP.to_owned()),
                ("Cache-Control", "no-cache".to_owned()),
                ("Referrer-Policy", "no-referrer".to_owned()),
            ],
            body: bytes::Bytes::from_static(self.body),
        }
    }
}
