//! The caller's request as the runtime hands it over, with its method, URL and headers read
//! once.
//!
//! workers-rs's own `Request` also reads the request's `cf` object on every request. The
//! gateway never uses it, and in a CPU profile of the metered path (one hot key, c=16) that
//! one read cost about 8 % of the fetch handler's time.

use worker::{Headers, Method};

pub struct Incoming {
    raw: web_sys::Request,
    method: Method,
    url: String,
    headers: Headers,
}

impl Incoming {
    pub fn of(raw: web_sys::Request) -> Incoming {
        Incoming { method: Method::from(raw.method()), url: raw.url(), headers: Headers(raw.headers()), raw }
    }

    pub fn method(&self) -> Method {
        self.method.clone()
    }

    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// The absolute URL, as the runtime serialised it.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The URL's path, still percent-encoded.
    pub fn path(&self) -> &str {
        path_of(&self.url)
    }

    /// The raw query string, without its `?`.
    pub fn query(&self) -> Option<&str> {
        let (_, q) = self.url.split_once('?')?;
        Some(q.split('#').next().unwrap_or(q))
    }

    /// The runtime's request, for its body.
    pub fn raw(&self) -> &web_sys::Request {
        &self.raw
    }
}

/// The path of an absolute URL the runtime serialised: it starts at the first `/` after the
/// host (never empty for http and https) and ends at `?` or `#`, which a serialised path
/// always percent-encodes.
fn path_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let path = rest.find('/').map_or("/", |i| &rest[i..]);
    path.split(['?', '#']).next().unwrap_or(path)
}
