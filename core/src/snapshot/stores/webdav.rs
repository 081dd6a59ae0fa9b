//! `snapshot.store = "webdav"`: a folder on a WebDAV server (PUT, GET, PROPFIND, MKCOL, COPY, DELETE
//! through object_store's HTTP store), from `[snapshot.webdav]` ([`SnapshotWebdavConfig`]):
//! - `url`: `http(s)://host[:port]/path`, in HarmonyLite's form too:
//!   `https://host/path?dir=/x&login=u&secret=p` (`dir` is a folder below `path`).
//! - `login`/`secret`: HTTP basic authentication; they override the ones in `url`. Without them requests
//!   are anonymous.
//!
//! A WebDAV server writes a PUT into the file as it arrives, so an upload goes to a hidden temporary name
//! and is copied over the key on the server (COPY) once complete. WebDAV has no multipart upload, and
//! object_store's payloads live in memory, so a file larger than one part goes up as one PUT whose body
//! is read from the file as it is sent (not retried: the next save tries again).

use std::path::Path as FsPath;
use std::sync::Arc;

use futures::future::BoxFuture;
use object_store::http::HttpBuilder;
use object_store::path::Path;
use percent_encoding::percent_decode_str;

use super::transport::{Connector, HttpOptions};
use super::{error_chain, ObjectSnapshotStore, StoreDetails, Visibility};
use crate::config::SnapshotWebdavConfig;
use crate::error::{Error, Result};

/// A WebDAV folder as a snapshot store.
pub type WebDavStore = ObjectSnapshotStore<WebDavDetails>;

pub struct WebDavDetails {
    /// `scheme://host[:port]`, without credentials.
    origin: String,
    /// The folder, empty or ending with `/`.
    folder: String,
    login: Option<String>,
    connector: Connector,
}

impl StoreDetails for WebDavDetails {
    fn describe(&self) -> String {
        format!("webdav:{}/{}", self.origin, self.folder)
    }

    fn target(&self, full_key: &str) -> String {
        format!("webdav:{}/{full_key}", self.origin)
    }

    fn hint(&self, err: &object_store::Error) -> Option<String> {
        let refused = matches!(
            err,
            object_store::Error::PermissionDenied { .. }
                | object_store::Error::Unauthenticated { .. }
        );
        (refused && self.login.is_none()).then(|| {
            "no login was given: set snapshot.webdav.login/secret, or login= and secret= in the url"
                .to_string()
        })
    }

    fn upload_file<'a>(
        &'a self,
        path: &'a Path,
        source: &'a FsPath,
        size: u64,
    ) -> Option<BoxFuture<'a, std::result::Result<(), String>>> {
        Some(Box::pin(async move {
            // The same URL object_store would use for `path`: each segment percent-encoded.
            let mut url = reqwest::Url::parse(&self.origin).map_err(|err| err.to_string())?;
            url.path_segments_mut()
                .map_err(|()| format!("{} cannot have a path", self.origin))?
                .extend(path.parts().map(|part| part.as_ref().to_string()));
            self.connector.put_file(url.as_str(), source, size).await
        }))
    }
}

/// Where the store is and who it is, from `[snapshot.webdav]`.
#[derive(Debug, PartialEq)]
pub(crate) struct WebDavTarget {
    pub origin: String,
    pub folder: String,
    pub credentials: Option<(String, String)>,
}

pub(crate) fn parse(cfg: &SnapshotWebdavConfig) -> Result<WebDavTarget> {
    let field = "snapshot.webdav.url";
    let text = cfg.url.trim();
    if text.is_empty() {
        return Err(Error::config(
            field,
            "is required when snapshot.store = \"webdav\"",
        ));
    }
    let url = reqwest::Url::parse(text)
        .map_err(|err| Error::config(field, format!("`{text}` is not a URL: {err}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Error::config(
            field,
            format!(
                "`{text}` has scheme `{}`; use http:// or https://",
                url.scheme()
            ),
        ));
    }
    let host = url
        .host_str()
        .filter(|host| !host.is_empty())
        .ok_or_else(|| Error::config(field, format!("`{text}` has no host")))?;
    let origin = match url.port() {
        Some(port) => format!("{}://{host}:{port}", url.scheme()),
        None => format!("{}://{host}", url.scheme()),
    };
    let (mut dir, mut login, mut secret) = (String::new(), String::new(), String::new());
    for (key, value) in url.query_pairs() {
        match key.as_ref() {
            "dir" => dir = value.into_owned(),
            "login" => login = value.into_owned(),
            "secret" => secret = value.into_owned(),
            other => {
                return Err(Error::config(
                    field,
                    format!("unknown query parameter `{other}` (known: dir, login, secret)"),
                ))
            }
        }
    }
    if !url.username().is_empty() {
        return Err(Error::config(
            field,
            "put the login in snapshot.webdav.login/secret (or login= and secret= in the query), \
             not before the host",
        ));
    }
    let path = percent_decode_str(url.path())
        .decode_utf8()
        .map_err(|err| Error::config(field, format!("`{text}`: {err}")))?;
    let folder = super::normalize_prefix(&format!(
        "{}/{}",
        path.trim_matches('/'),
        dir.trim_matches('/')
    ));
    if folder.split('/').any(|part| part == "." || part == "..") {
        return Err(Error::config(
            field,
            format!("`{text}` has a `.` or `..` segment"),
        ));
    }
    if !cfg.login.trim().is_empty() {
        login = cfg.login.trim().to_string();
    }
    if !cfg.secret.is_empty() {
        secret = cfg.secret.clone();
    }
    let credentials = match (login.is_empty(), secret.is_empty()) {
        (true, true) => None,
        (false, _) => Some((login, secret)),
        (true, false) => {
            return Err(Error::config(
                "snapshot.webdav.login",
                "is empty but a secret is set; set both or neither",
            ))
        }
    };
    Ok(WebDavTarget {
        origin,
        folder,
        credentials,
    })
}

impl WebDavStore {
    pub fn from_config(cfg: &SnapshotWebdavConfig) -> Result<WebDavStore> {
        WebDavStore::from_config_with(cfg, HttpOptions::default())
    }

    pub fn from_config_with(
        cfg: &SnapshotWebdavConfig,
        options: HttpOptions,
    ) -> Result<WebDavStore> {
        options.validate("snapshot.webdav")?;
        let target = parse(cfg)?;
        // The store is rooted at the server, the folder is the key prefix: object_store's listing
        // reports paths from the server root, whatever URL it was given.
        let connector = options.connector(target.credentials.clone())?;
        let store = HttpBuilder::new()
            .with_url(&target.origin)
            .with_retry(options.retry_config())
            .with_http_connector(connector.clone())
            .build()
            .map_err(|err| {
                Error::config(
                    "snapshot.webdav.url",
                    format!("cannot set up {}: {}", target.origin, error_chain(&err)),
                )
            })?;
        let details = WebDavDetails {
            origin: target.origin,
            folder: target.folder.clone(),
            login: target.credentials.map(|(login, _)| login),
            connector,
        };
        Ok(ObjectSnapshotStore::wrap(
            Arc::new(store),
            details,
            &target.folder,
            options.multipart_part_size,
            Visibility::ViaTemporary,
            false,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(url: &str) -> SnapshotWebdavConfig {
        SnapshotWebdavConfig {
            url: url.into(),
            ..SnapshotWebdavConfig::default()
        }
    }

    #[test]
    fn harmonylite_urls_are_understood() {
        let target = parse(&cfg(
            "https://dav.example:8443/remote.php/files?dir=/snaps&login=u&secret=p%26q",
        ))
        .expect("target");
        assert_eq!(
            target,
            WebDavTarget {
                origin: "https://dav.example:8443".into(),
                folder: "remote.php/files/snaps/".into(),
                credentials: Some(("u".into(), "p&q".into())),
            }
        );
        let mut explicit = cfg("http://h/dav/?login=u&secret=p");
        explicit.login = "other".into();
        explicit.secret = "s".into();
        let target = parse(&explicit).expect("target");
        assert_eq!(target.folder, "dav/");
        assert_eq!(target.credentials, Some(("other".into(), "s".into())));
        assert_eq!(parse(&cfg("http://h")).expect("target").credentials, None);
        assert_eq!(parse(&cfg("http://h")).expect("target").folder, "");
    }

    #[test]
    fn bad_urls_name_the_key() {
        for (url, field) in [
            ("", "snapshot.webdav.url"),
            ("ftp://h/x", "snapshot.webdav.url"),
            ("not a url", "snapshot.webdav.url"),
            ("http://h/x?depth=1", "snapshot.webdav.url"),
            ("http://u:p@h/x", "snapshot.webdav.url"),
            ("http://h/x?secret=p", "snapshot.webdav.login"),
        ] {
            match parse(&cfg(url)) {
                Err(Error::Config { field: got, .. }) => assert_eq!(got, field, "{url}"),
                other => panic!("{url}: {other:?}"),
            }
        }
    }
}
