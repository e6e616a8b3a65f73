//! The two S3 requests OpenDAL does not make: ListMultipartUploads and an
//! AbortMultipartUpload by id. OpenDAL aborts the uploads it is driving;
//! an upload whose process was killed, or whose service was unreachable
//! when it tried, stays open (its parts stored and billed) until someone
//! lists it and aborts it by id. Signed with SigV4 by reqsign (the signer
//! OpenDAL itself uses), sent with the storage's own HTTP client.

use super::OpenUpload;
use http::Method;
use reqsign_core::SignRequest;
use serde::Deserialize;
use std::io;

/// Most pages of one listing (S3 sends up to 1000 uploads a page).
const MAX_PAGES: usize = 1000;

/// Signed requests to one bucket.
#[derive(Clone)]
pub(super) struct BucketRequests {
    pub client: reqwest::Client,
    /// `https://host/bucket` (path style) or `https://bucket.host`.
    pub bucket_url: String,
    /// The repository's key prefix inside the bucket: `` or `a/b/`.
    pub root: String,
    pub signer: std::sync::Arc<reqsign_aws_v4::RequestSigner>,
    pub credential: std::sync::Arc<reqsign_aws_v4::Credential>,
    /// Where the credentials came from, for refusals.
    pub credential_source: String,
}

/// The base URL of `bucket`, formed by the rules OpenDAL's S3 service
/// follows for every other request (so that these go where those go):
/// `https://` when the endpoint names no scheme; a bucket name already
/// in the endpoint's host dropped; the URL normalised (default port,
/// case); AWS's global endpoint made regional; then the bucket as a path
/// or as a host name.
pub(super) fn bucket_url(
    endpoint: Option<&str>,
    region: &str,
    bucket: &str,
    virtual_hosted: bool,
) -> String {
    let mut url = match endpoint {
        Some(endpoint) if endpoint.starts_with("http") => endpoint.to_string(),
        Some(endpoint) => format!("https://{endpoint}"),
        None => "https://s3.amazonaws.com".to_string(),
    };
    url = url.replace(&format!("//{bucket}."), "//");
    if let Ok(parsed) = reqwest::Url::parse(&url) {
        url = parsed.to_string().trim_end_matches('/').to_string();
    }
    if url == "https://s3.amazonaws.com" {
        url = format!("https://s3.{region}.amazonaws.com");
    }
    if virtual_hosted {
        url.replacen("//", &format!("//{bucket}."), 1)
    } else {
        format!("{url}/{bucket}")
    }
}

/// Percent-encodes all but S3's unreserved characters (and `/` in a path).
fn encode(text: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(byte as char)
            }
            b'/' if keep_slash => out.push('/'),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListResult {
    #[serde(default)]
    upload: Vec<ListedUpload>,
    #[serde(default)]
    is_truncated: bool,
    next_key_marker: Option<String>,
    next_upload_id_marker: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListedUpload {
    key: String,
    upload_id: String,
    initiated: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ErrorBody {
    code: Option<String>,
    message: Option<String>,
}

impl BucketRequests {
    /// Uploads open under `prefix` (a repository key prefix), every page.
    pub async fn list(&self, prefix: &str) -> io::Result<Vec<OpenUpload>> {
        let mut uploads = Vec::new();
        let mut marker: Option<(String, String)> = None;
        for _ in 0..MAX_PAGES {
            let mut url = format!(
                "{}/?uploads&prefix={}",
                self.bucket_url,
                encode(&format!("{}{prefix}", self.root), false)
            );
            if let Some((key, id)) = &marker {
                url.push_str(&format!(
                    "&key-marker={}&upload-id-marker={}",
                    encode(key, false),
                    encode(id, false)
                ));
            }
            let body = self.send(Method::GET, &url, "list open uploads").await?;
            let page: ListResult = quick_xml::de::from_reader(body.as_slice()).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "list open uploads: the answer is not a ListMultipartUploadsResult ({e})"
                    ),
                )
            })?;
            for listed in page.upload {
                // Keys outside the repository (another prefix's) are not ours.
                if let Some(key) = listed.key.strip_prefix(&self.root) {
                    uploads.push(OpenUpload {
                        key: key.to_string(),
                        id: listed.upload_id,
                        initiated: listed.initiated,
                    });
                }
            }
            if !page.is_truncated {
                return Ok(uploads);
            }
            match (page.next_key_marker, page.next_upload_id_marker) {
                (Some(key), Some(id)) if marker.as_ref() != Some(&(key.clone(), id.clone())) => {
                    marker = Some((key, id));
                }
                _ => {
                    return Err(io::Error::other(
                        "list open uploads: the service said there is more but gave no place to go on from",
                    ));
                }
            }
        }
        Err(io::Error::other(format!(
            "list open uploads: more than {MAX_PAGES} pages"
        )))
    }

    /// Aborts one open upload; one that is already gone (NoSuchUpload) is
    /// not an error.
    pub async fn abort(&self, upload: &OpenUpload) -> io::Result<()> {
        let url = format!(
            "{}/{}?uploadId={}",
            self.bucket_url,
            encode(&format!("{}{}", self.root, upload.key), true),
            encode(&upload.id, false)
        );
        match self.send(Method::DELETE, &url, "abort open upload").await {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other.map(|_| ()),
        }
    }

    /// Sends one signed request without a body; the answer's body on 2xx.
    /// A dropped connection, a 5xx or a "slow down" (429) is retried three
    /// times (from half a second, doubling), as OpenDAL retries its own.
    async fn send(&self, method: Method, url: &str, what: &str) -> io::Result<Vec<u8>> {
        let mut delay = std::time::Duration::from_millis(500);
        let mut attempts_left = 3;
        loop {
            match self.send_once(method.clone(), url, what).await {
                Err(Failure::Passing(_)) if attempts_left > 0 => {
                    attempts_left -= 1;
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                Err(Failure::Passing(e)) | Err(Failure::Final(e)) => return Err(e),
                Ok(body) => return Ok(body),
            }
        }
    }

    async fn send_once(&self, method: Method, url: &str, what: &str) -> Result<Vec<u8>, Failure> {
        let request = http::Request::builder()
            .method(method)
            .uri(url)
            .body(())
            .map_err(|e| {
                Failure::Final(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{what}: {e}"),
                ))
            })?;
        let (mut parts, ()) = request.into_parts();
        // Signed anew for each attempt: the signature carries the time.
        self.signer
            .sign_request(
                &reqsign_core::Context::new(),
                &mut parts,
                Some(&*self.credential),
                None,
            )
            .await
            .map_err(|e| {
                Failure::Final(io::Error::other(format!(
                    "{what}: cannot sign the request: {e}"
                )))
            })?;
        let request = reqwest::Request::try_from(http::Request::from_parts(
            parts,
            reqwest::Body::from(Vec::new()),
        ))
        .map_err(|e| Failure::Final(io::Error::other(format!("{what}: {e}"))))?;
        let unreachable = |e: reqwest::Error| {
            let error = io::Error::other(format!("{what} failed: {}", one_line(&e)));
            // A request that could not even be formed is not worth a retry.
            if e.is_builder() {
                Failure::Final(error)
            } else {
                Failure::Passing(error)
            }
        };
        let response = self.client.execute(request).await.map_err(unreachable)?;
        let status = response.status();
        let body = response.bytes().await.map_err(unreachable)?;
        if status.is_success() {
            return Ok(body.to_vec());
        }
        let error: ErrorBody = quick_xml::de::from_reader(body.as_ref()).unwrap_or_default();
        let code = error
            .code
            .unwrap_or_else(|| format!("HTTP {}", status.as_u16()));
        let detail = match error.message {
            Some(message) => format!("{code} (HTTP {}): {message}", status.as_u16()),
            None => format!("{code} (HTTP {})", status.as_u16()),
        };
        let (kind, message) = match (status.as_u16(), code.as_str()) {
            (501, _) | (_, "NotImplemented") => (
                io::ErrorKind::Unsupported,
                format!("{what}: the service does not support it ({detail})"),
            ),
            (_, "AccessDenied") => (
                io::ErrorKind::PermissionDenied,
                format!(
                    "{what} refused: {detail}; credentials from {}",
                    self.credential_source
                ),
            ),
            // Refused for another reason (a bad signature, an expired
            // token, a clock out of step): not a permission the
            // credentials lack, but the credentials are worth naming.
            (403, _) => (
                io::ErrorKind::Other,
                format!(
                    "{what} refused: {detail}; credentials from {}",
                    self.credential_source
                ),
            ),
            (_, "NoSuchUpload") => (io::ErrorKind::NotFound, format!("{what}: {detail}")),
            (500.., _) | (429, _) | (_, "SlowDown") => {
                return Err(Failure::Passing(io::Error::other(format!(
                    "{what} failed: {detail}"
                ))));
            }
            _ => (io::ErrorKind::Other, format!("{what} failed: {detail}")),
        };
        Err(Failure::Final(io::Error::new(kind, message)))
    }
}

/// A request that failed: for a passing reason (no answer, a 5xx), worth
/// another try, or for good.
enum Failure {
    Passing(io::Error),
    Final(io::Error),
}

/// An HTTP client error and its causes on one line.
fn one_line(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_urls_follow_the_addressing() {
        assert_eq!(
            bucket_url(Some("http://127.0.0.1:9000/"), "us-east-1", "b", false),
            "http://127.0.0.1:9000/b"
        );
        assert_eq!(
            bucket_url(None, "eu-west-1", "b", true),
            "https://b.s3.eu-west-1.amazonaws.com"
        );
        assert_eq!(
            bucket_url(Some("minio.lan:9000"), "x", "b", false),
            "https://minio.lan:9000/b"
        );
        // AWS's global endpoint is made regional, as OpenDAL does.
        assert_eq!(
            bucket_url(Some("https://s3.amazonaws.com"), "eu-west-1", "b", false),
            "https://s3.eu-west-1.amazonaws.com/b"
        );
        // A bucket already in the endpoint is not named twice; a default
        // port is dropped.
        assert_eq!(
            bucket_url(Some("https://b.s3.example.com:443/"), "x", "b", true),
            "https://b.s3.example.com"
        );
    }

    #[test]
    fn keys_are_encoded_for_urls() {
        assert_eq!(encode("a/b c+d", true), "a/b%20c%2Bd");
        assert_eq!(encode("a/b", false), "a%2Fb");
    }

    #[test]
    fn listings_parse() {
        let text = "<?xml version=\"1.0\"?><ListMultipartUploadsResult \
            xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Bucket>b</Bucket>\
            <IsTruncated>true</IsTruncated><NextKeyMarker>p/k2</NextKeyMarker>\
            <NextUploadIdMarker>u2</NextUploadIdMarker>\
            <Upload><Key>p/k1</Key><UploadId>u1</UploadId><Initiated>2026-01-01T00:00:00Z</Initiated></Upload>\
            <Upload><Key>p/k2</Key><UploadId>u2</UploadId></Upload></ListMultipartUploadsResult>";
        let page: ListResult = quick_xml::de::from_str(text).unwrap();
        assert!(page.is_truncated);
        assert_eq!(page.upload.len(), 2);
        assert_eq!(page.upload[1].upload_id, "u2");
        assert_eq!(page.next_key_marker.as_deref(), Some("p/k2"));
        let empty: ListResult =
            quick_xml::de::from_str("<ListMultipartUploadsResult><IsTruncated>false</IsTruncated></ListMultipartUploadsResult>").unwrap();
        assert!(empty.upload.is_empty() && !empty.is_truncated);
    }
}
