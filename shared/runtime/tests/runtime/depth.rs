//! Hostile nesting: an envelope whose `data` nests hundreds of arrays is refused with
//! `400 bad_request` naming the depth limit, in JSON and MessagePack, before any decoder
//! recurses into it (in a debug build, 650 levels used to overflow the stack), and the
//! service keeps answering.

use super::*;

/// The echo request in `encoding` with `data` replaced by `arrays` nested arrays.
fn nested_request(arrays: usize, encoding: Encoding) -> Vec<u8> {
    let marker = "@@DATA@@";
    let bytes = encode(&envelope("x").map_data(|_| marker), encoding).unwrap();
    let (needle, nested): (Vec<u8>, Vec<u8>) = match encoding {
        Encoding::Json => (
            format!("\"{marker}\"").into_bytes(),
            format!("{}1{}", "[".repeat(arrays), "]".repeat(arrays)).into_bytes(),
        ),
        Encoding::MessagePack => {
            let mut needle = vec![0xa0 | marker.len() as u8];
            needle.extend(marker.as_bytes());
            let mut nested = vec![0x91; arrays];
            nested.push(0x01);
            (needle, nested)
        }
    };
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle.as_slice())
        .unwrap();
    [&bytes[..at], &nested, &bytes[at + needle.len()..]].concat()
}

#[tokio::test]
async fn deeply_nested_requests_are_refused_and_the_service_keeps_answering() {
    let server = NatsServer::start().await;
    let client = server.client().await;
    let _host = echo_host(
        &client,
        EndpointConfig {
            max_payload_bytes: 64 * 1024,
            concurrency: 8,
        },
    )
    .await;
    for encoding in [Encoding::Json, Encoding::MessagePack] {
        let bytes = nested_request(650, encoding);
        if encoding == Encoding::MessagePack {
            // The message of the report: 800 bytes or so, no credentials needed.
            assert!(bytes.len() < 1100, "{} bytes", bytes.len());
        }
        let mut headers = HeaderMap::new();
        headers.insert("Content-Type", encoding.content_type());
        let (code, reply, reply_headers) = raw(&client, bytes, headers).await;
        assert_eq!(code, Some(400), "{encoding:?}");
        let body: ErrorBody = serde_json::from_value(reply.data).unwrap();
        assert_eq!(body.code, ErrorCode::BadRequest);
        assert!(
            body.message.contains("limit of 64 levels"),
            "{encoding:?}: {}",
            body.message
        );
        let described = reply_headers.get("Nats-Service-Error").unwrap().as_str();
        assert!(described.contains("limit of 64 levels"), "{described}");
        assert_still_serving(&client).await;
    }
}
