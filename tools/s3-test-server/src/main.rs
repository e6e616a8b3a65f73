//! pgward's test S3 server: s3s-fs, plus ListMultipartUploads, atomic
//! conditional writes, and `If-Match` on reads (GET and HEAD).
//!
//! Usage: pgward-s3-test-server --host H --port P --access-key K
//!        --secret-key S [--list-page N] [--without-list-uploads]
//!        [--busy-list-uploads] ROOT
//!
//! ROOT holds one directory per bucket (the layout of s3s-fs). Every
//! request must carry a SigV4 signature made with K and S.

use s3s::dto::*;
use s3s::{S3, S3Request, S3Response, S3Result, s3_error};
use s3s_fs::FileSystem;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

struct Options {
    host: String,
    port: u16,
    access_key: String,
    secret_key: String,
    /// Most uploads in one ListMultipartUploads answer (S3: 1000); small
    /// values make clients page.
    list_page: usize,
    /// Answer ListMultipartUploads with NotImplemented, as some services
    /// (and s3s-fs) do.
    without_list_uploads: bool,
    /// Answer ListMultipartUploads with 503 SlowDown, always.
    busy_list_uploads: bool,
    root: PathBuf,
}

fn parse_options() -> Result<Options, String> {
    let mut args = std::env::args().skip(1);
    let (mut host, mut port, mut access_key, mut secret_key) = (None, None, None, None);
    let (mut list_page, mut root) = (1000, None);
    let (mut without_list_uploads, mut busy_list_uploads) = (false, false);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--host" => host = Some(value()?),
            "--port" => port = Some(value()?.parse().map_err(|_| "--port: not a port")?),
            "--access-key" => access_key = Some(value()?),
            "--secret-key" => secret_key = Some(value()?),
            "--list-page" => {
                list_page = value()?.parse().map_err(|_| "--list-page: not a count")?;
            }
            "--without-list-uploads" => without_list_uploads = true,
            "--busy-list-uploads" => busy_list_uploads = true,
            "--version" => {
                println!("pgward-s3-test-server {}", env!("CARGO_PKG_VERSION"));
                std::process::exit(0);
            }
            _ if !arg.starts_with("--") && root.is_none() => root = Some(PathBuf::from(arg)),
            _ => return Err(format!("unexpected argument {arg}")),
        }
    }
    Ok(Options {
        host: host.unwrap_or_else(|| "127.0.0.1".into()),
        port: port.ok_or("--port is required")?,
        access_key: access_key.ok_or("--access-key is required")?,
        secret_key: secret_key.ok_or("--secret-key is required")?,
        list_page: list_page.max(1),
        without_list_uploads,
        busy_list_uploads,
        root: root.ok_or("the data directory is required")?,
    })
}

struct Server {
    fs: FileSystem,
    root: PathBuf,
    list_page: usize,
    without_list_uploads: bool,
    busy_list_uploads: bool,
    /// Held from a conditional write's check to its effect: s3s-fs checks
    /// `If-None-Match`/`If-Match` and then writes, and two writers must
    /// not both pass the check (they cannot on S3).
    writes: tokio::sync::Mutex<()>,
}

/// One open multipart upload, from the metadata file s3s-fs keeps for it:
/// `.bucket-B64.object-B64.upload-UUID.metadata.json` (URL-safe base64),
/// open while `.upload-UUID.json` exists.
fn open_uploads(
    root: &std::path::Path,
    bucket: &str,
) -> std::io::Result<Vec<(String, String, std::time::SystemTime)>> {
    let decode = |s: &str| {
        base64_simd::URL_SAFE_NO_PAD
            .decode_to_vec(s)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
    };
    let mut uploads = Vec::new();
    for entry in std::fs::read_dir(root)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name
            .strip_prefix(".bucket-")
            .and_then(|r| r.strip_suffix(".metadata.json"))
        else {
            continue;
        };
        let Some((b, rest)) = rest.split_once(".object-") else {
            continue;
        };
        let Some((k, id)) = rest.split_once(".upload-") else {
            continue;
        };
        let (Some(b), Some(k)) = (decode(b), decode(k)) else {
            continue;
        };
        if b != bucket || !root.join(format!(".upload-{id}.json")).exists() {
            continue;
        }
        // An upload completed or aborted meanwhile is no longer open.
        let Ok(initiated) = entry.metadata().and_then(|m| m.modified()) else {
            continue;
        };
        uploads.push((k, id.to_string(), initiated));
    }
    uploads.sort();
    Ok(uploads)
}

/// A read's `If-Match` against the object's ETag (s3s-fs ignores it on
/// reads): 412 PreconditionFailed when the object is another version.
fn matches(condition: Option<&IfMatch>, etag: Option<&ETag>) -> S3Result<()> {
    match condition {
        Some(ETagCondition::ETag(expected))
            if !etag.is_some_and(|tag| tag.strong_cmp(expected)) =>
        {
            Err(s3_error!(PreconditionFailed, "ETag does not match"))
        }
        _ => Ok(()),
    }
}

#[async_trait::async_trait]
impl S3 for Server {
    async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        if self.without_list_uploads {
            return Err(s3_error!(
                NotImplemented,
                "ListMultipartUploads is not implemented"
            ));
        }
        if self.busy_list_uploads {
            return Err(s3_error!(SlowDown));
        }
        let input = req.input;
        if !self.root.join(&input.bucket).is_dir() {
            return Err(s3_error!(NoSuchBucket));
        }
        let prefix = input.prefix.clone().unwrap_or_default();
        let after = (
            input.key_marker.clone().unwrap_or_default(),
            input.upload_id_marker.clone().unwrap_or_default(),
        );
        let page = input
            .max_uploads
            .map_or(self.list_page, |m| (m.max(1) as usize).min(self.list_page));
        let all =
            open_uploads(&self.root, &input.bucket).map_err(|e| s3_error!(InternalError, "{e}"))?;
        let mut matching = all.into_iter().filter(|(key, id, _)| {
            key.starts_with(&prefix)
                && (after.0.is_empty()
                    || (key.as_str(), id.as_str()) > (after.0.as_str(), after.1.as_str()))
        });
        let uploads: Vec<_> = matching.by_ref().take(page).collect();
        let truncated = matching.next().is_some();
        let last = uploads.last().map(|(k, id, _)| (k.clone(), id.clone()));
        let output = ListMultipartUploadsOutput {
            bucket: Some(input.bucket),
            prefix: input.prefix,
            key_marker: input.key_marker,
            upload_id_marker: input.upload_id_marker,
            max_uploads: Some(page as i32),
            is_truncated: Some(truncated),
            next_key_marker: last.as_ref().filter(|_| truncated).map(|l| l.0.clone()),
            next_upload_id_marker: last.filter(|_| truncated).map(|l| l.1),
            uploads: Some(
                uploads
                    .into_iter()
                    .map(|(key, id, initiated)| MultipartUpload {
                        key: Some(key),
                        upload_id: Some(id),
                        initiated: Some(Timestamp::from(initiated)),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        };
        Ok(S3Response::new(output))
    }

    async fn put_object(
        &self,
        mut req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        // The whole body first, so that the lock is never held while a
        // slow client sends it.
        if let Some(mut body) = req.input.body.take() {
            use futures::StreamExt;
            let mut bytes = Vec::new();
            while let Some(chunk) = body.next().await {
                bytes.extend_from_slice(&chunk.map_err(|e| s3_error!(IncompleteBody, "{e}"))?);
            }
            req.input.body = Some(StreamingBlob::from(s3s::Body::from(bytes)));
        }
        let _held = self.writes.lock().await;
        self.fs.put_object(req).await
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let _held = self.writes.lock().await;
        self.fs.complete_multipart_upload(req).await
    }

    async fn copy_object(
        &self,
        req: S3Request<CopyObjectInput>,
    ) -> S3Result<S3Response<CopyObjectOutput>> {
        let _held = self.writes.lock().await;
        self.fs.copy_object(req).await
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        let _held = self.writes.lock().await;
        self.fs.delete_object(req).await
    }

    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        let _held = self.writes.lock().await;
        self.fs.delete_objects(req).await
    }

    // The rest is s3s-fs as it is.

    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        self.fs.create_bucket(req).await
    }

    async fn delete_bucket(
        &self,
        req: S3Request<DeleteBucketInput>,
    ) -> S3Result<S3Response<DeleteBucketOutput>> {
        self.fs.delete_bucket(req).await
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        self.fs.get_bucket_location(req).await
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        let condition = req.input.if_match.clone();
        let response = self.fs.get_object(req).await?;
        matches(condition.as_ref(), response.output.e_tag.as_ref())?;
        Ok(response)
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        self.fs.head_bucket(req).await
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        let condition = req.input.if_match.clone();
        let response = self.fs.head_object(req).await?;
        matches(condition.as_ref(), response.output.e_tag.as_ref())?;
        Ok(response)
    }

    async fn list_buckets(
        &self,
        req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        self.fs.list_buckets(req).await
    }

    async fn list_objects(
        &self,
        req: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        self.fs.list_objects(req).await
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        self.fs.list_objects_v2(req).await
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        self.fs.create_multipart_upload(req).await
    }

    async fn upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        self.fs.upload_part(req).await
    }

    async fn upload_part_copy(
        &self,
        req: S3Request<UploadPartCopyInput>,
    ) -> S3Result<S3Response<UploadPartCopyOutput>> {
        self.fs.upload_part_copy(req).await
    }

    async fn list_parts(
        &self,
        req: S3Request<ListPartsInput>,
    ) -> S3Result<S3Response<ListPartsOutput>> {
        self.fs.list_parts(req).await
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        // S3 answers NoSuchUpload for an upload that is gone, or is not
        // of this key (s3s-fs says AccessDenied, or aborts it anyway).
        let input = &req.input;
        let known = open_uploads(&self.root, &input.bucket).is_ok_and(|uploads| {
            uploads
                .iter()
                .any(|(key, id, _)| *key == input.key && *id == input.upload_id)
        });
        if !known {
            return Err(s3_error!(NoSuchUpload));
        }
        self.fs.abort_multipart_upload(req).await
    }
}

fn main() -> ExitCode {
    let options = match parse_options() {
        Ok(options) => options,
        Err(e) => {
            eprintln!("pgward-s3-test-server: {e}");
            return ExitCode::from(2);
        }
    };
    match serve(options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgward-s3-test-server: {e}");
            ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn serve(options: Options) -> Result<(), Box<dyn std::error::Error>> {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto::Builder as ConnBuilder;

    let root = std::env::current_dir()?
        .join(&options.root)
        .canonicalize()?;
    let server = Server {
        fs: FileSystem::new(&root).map_err(|e| format!("{e:?}"))?,
        root,
        list_page: options.list_page,
        without_list_uploads: options.without_list_uploads,
        busy_list_uploads: options.busy_list_uploads,
        writes: tokio::sync::Mutex::new(()),
    };
    let service = {
        let mut builder = s3s::service::S3ServiceBuilder::new(server);
        builder.set_auth(s3s::auth::SimpleAuth::from_single(
            options.access_key,
            options.secret_key,
        ));
        builder.build()
    };
    let listener = tokio::net::TcpListener::bind((options.host.as_str(), options.port)).await?;
    let http = Arc::new(ConnBuilder::new(TokioExecutor::new()));
    loop {
        let (socket, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(_) => continue,
        };
        let connection = http
            .serve_connection(TokioIo::new(socket), service.clone())
            .into_owned();
        tokio::spawn(async move {
            let _ = connection.await;
        });
    }
}
