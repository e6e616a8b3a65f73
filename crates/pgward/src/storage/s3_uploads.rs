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

/// The base URL of `bucket`, as OpenDAL forms it: under `endpoint` (or
/// AWS's regional endpoint), path-style or virtual-hosted.
pub(super) fn bucket_url(
    endpoint: Option<&str>,
    region: &str,
    bucket: &str,
    virtual_hosted: bool,
) -> String {
    let endpoint = endpoint
        .map(|e| e.trim_end_matches('/').to_string())
        .unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
    let endpoint = if endpoint.contains("://") {
        endpoint
    } else {
        format!("https://{endpoint}")
    };
    if virtual_hosted {
        let (scheme, host) = endpoint.split_once("://").expect("has a scheme");
        format!("{scheme}://{bucket}.{host}")
    } else {
        format!("{endpoint}/{}", encode(bucket, false))
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

    /// Aborts one open upload; one that is already gone is not an error.
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
    async fn send(&self, method: Method, url: &str, what: &str) -> io::Result<Vec<u8>> {
        let request = http::Request::builder()
            .method(method)
            .uri(url)
            .body(())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{what}: {e}")))?;
        let (mut parts, ()) = request.into_parts();
        self.signer
            .sign_request(
                &reqsign_core::Context::new(),
                &mut parts,
                Some(&*self.credential),
                None,
            )
            .await
            .map_err(|e| io::Error::other(format!("{what}: cannot sign the request: {e}")))?;
        let request = reqwest::Request::try_from(http::Request::from_parts(
            parts,
            reqwest::Body::from(Vec::new()),
        ))
        .map_err(|e| io::Error::other(format!("{what}: {e}")))?;
        let response = self
            .client
            .execute(request)
            .await
            .map_err(|e| io::Error::other(format!("{what} failed: {}", one_line(&e))))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| io::Error::other(format!("{what} failed: {}", one_line(&e))))?;
        if status.is_success() {
            return Ok(body.to_vec());
        }
        let error: ErrorBody = quick_xml::de::from_reader(body.as_ref()).unwrap_or_default();
        let code = error.code.unwrap_or_else(|| status.as_u16().to_string());
        let detail = match error.message {
            Some(message) => format!("{code}: {message}"),
            None => code.clone(),
        };
        let kind = match (status.as_u16(), code.as_str()) {
            (501, _) | (_, "NotImplemented") => io::ErrorKind::Unsupported,
            (403, _) | (_, "AccessDenied") => io::ErrorKind::PermissionDenied,
            (404, _) if code != "NoSuchBucket" => io::ErrorKind::NotFound,
            _ => io::ErrorKind::Other,
        };
        let message = match kind {
            io::ErrorKind::PermissionDenied => format!(
                "{what} refused: {detail}; credentials from {}",
                self.credential_source
            ),
            io::ErrorKind::Unsupported => {
                format!("{what}: the service does not support it ({detail})")
            }
            _ => format!("{what} failed: {detail}"),
        };
        Err(io::Error::new(kind, message))
    }
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
    }

    #[test]
    fn keys_are_encoded_for_urls() {
        assert_eq!(encode("a/b c+d", true), "a/b%20c%2Bd");
        assert_eq!(encode("a/b", false), "a%2Fb");
    }

    #[test]
    fn listings_parse() {
        let text = "<?xml version=\"1.0\"?><ListMultipartUploadsResult><Bucket>b</Bucket>\
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
