//! Request bodies in Kubernetes protobuf (`application/vnd.kubernetes.protobuf`) for the
//! few kinds kubectl's typed-client commands create (`kubectl create namespace|configmap|
//! secret|service`), decoded to the JSON form everything else works on. Other kinds in
//! protobuf are refused with 415. Responses are always JSON, which client-go accepts.
//!
//! Wire format: the 4-byte magic `k8s\0`, then a `runtime.Unknown` message
//! (1: typeMeta {1: apiVersion, 2: kind}, 2: raw), where `raw` is the object's message.

use serde_json::{Map, Value, json};

/// How one field of a message decodes.
#[derive(Clone, Copy)]
enum Kind {
    Str,
    Int,
    Bool,
    Time,
    IntOrString,
    RepeatedStr,
    MapStrStr,
    MapStrBytes,
    Msg(&'static [Field]),
    RepeatedMsg(&'static [Field]),
}

type Field = (u64, &'static str, Kind);

const OWNER_REFERENCE: &[Field] = &[
    (1, "kind", Kind::Str),
    (3, "name", Kind::Str),
    (4, "uid", Kind::Str),
    (5, "apiVersion", Kind::Str),
    (6, "controller", Kind::Bool),
    (7, "blockOwnerDeletion", Kind::Bool),
];

const OBJECT_META: &[Field] = &[
    (1, "name", Kind::Str),
    (2, "generateName", Kind::Str),
    (3, "namespace", Kind::Str),
    (5, "uid", Kind::Str),
    (6, "resourceVersion", Kind::Str),
    (7, "generation", Kind::Int),
    (8, "creationTimestamp", Kind::Time),
    (11, "labels", Kind::MapStrStr),
    (12, "annotations", Kind::MapStrStr),
    (13, "ownerReferences", Kind::RepeatedMsg(OWNER_REFERENCE)),
    (14, "finalizers", Kind::RepeatedStr),
];

const CONFIG_MAP: &[Field] = &[
    (1, "metadata", Kind::Msg(OBJECT_META)),
    (2, "data", Kind::MapStrStr),
    (3, "binaryData", Kind::MapStrBytes),
    (4, "immutable", Kind::Bool),
];

const SECRET: &[Field] = &[
    (1, "metadata", Kind::Msg(OBJECT_META)),
    (2, "data", Kind::MapStrBytes),
    (3, "type", Kind::Str),
    (4, "stringData", Kind::MapStrStr),
    (5, "immutable", Kind::Bool),
];

const NAMESPACE_SPEC: &[Field] = &[(1, "finalizers", Kind::RepeatedStr)];

const NAMESPACE: &[Field] = &[
    (1, "metadata", Kind::Msg(OBJECT_META)),
    (2, "spec", Kind::Msg(NAMESPACE_SPEC)),
];

const SERVICE_PORT: &[Field] = &[
    (1, "name", Kind::Str),
    (2, "protocol", Kind::Str),
    (3, "port", Kind::Int),
    (4, "targetPort", Kind::IntOrString),
    (5, "nodePort", Kind::Int),
    (6, "appProtocol", Kind::Str),
];

const SERVICE_SPEC: &[Field] = &[
    (1, "ports", Kind::RepeatedMsg(SERVICE_PORT)),
    (2, "selector", Kind::MapStrStr),
    (3, "clusterIP", Kind::Str),
    (4, "type", Kind::Str),
    (5, "externalIPs", Kind::RepeatedStr),
    (7, "sessionAffinity", Kind::Str),
    (8, "loadBalancerIP", Kind::Str),
    (9, "loadBalancerSourceRanges", Kind::RepeatedStr),
    (10, "externalName", Kind::Str),
    (11, "externalTrafficPolicy", Kind::Str),
    (12, "healthCheckNodePort", Kind::Int),
    (13, "publishNotReadyAddresses", Kind::Bool),
    (17, "ipFamilyPolicy", Kind::Str),
    (18, "clusterIPs", Kind::RepeatedStr),
    (19, "ipFamilies", Kind::RepeatedStr),
    (20, "allocateLoadBalancerNodePorts", Kind::Bool),
    (21, "loadBalancerClass", Kind::Str),
    (22, "internalTrafficPolicy", Kind::Str),
];

const SERVICE: &[Field] = &[
    (1, "metadata", Kind::Msg(OBJECT_META)),
    (2, "spec", Kind::Msg(SERVICE_SPEC)),
];

/// Plain (non-pointer) Go bools among the fields above: false means unset.
const NON_POINTER_BOOLS: &[&str] = &["publishNotReadyAddresses"];

const TYPE_META: &[Field] = &[(1, "apiVersion", Kind::Str), (2, "kind", Kind::Str)];

/// One raw field: number and payload.
enum Raw<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, String> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self.buf.get(self.pos).ok_or("truncated varint")?;
            self.pos += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("varint too long".into())
    }

    fn next(&mut self) -> Result<Option<(u64, Raw<'a>)>, String> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let (number, wire) = (key >> 3, key & 7);
        let raw = match wire {
            0 => Raw::Varint(self.varint()?),
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|_| "length overflow")?;
                let end = self
                    .pos
                    .checked_add(len)
                    .filter(|e| *e <= self.buf.len())
                    .ok_or("truncated field")?;
                let bytes = &self.buf[self.pos..end];
                self.pos = end;
                Raw::Bytes(bytes)
            }
            1 => {
                self.pos = self
                    .pos
                    .checked_add(8)
                    .filter(|e| *e <= self.buf.len())
                    .ok_or("truncated fixed64")?;
                return self.next();
            }
            5 => {
                self.pos = self
                    .pos
                    .checked_add(4)
                    .filter(|e| *e <= self.buf.len())
                    .ok_or("truncated fixed32")?;
                return self.next();
            }
            other => return Err(format!("unsupported wire type {other}")),
        };
        Ok(Some((number, raw)))
    }
}

fn text(bytes: &[u8]) -> Result<String, String> {
    String::from_utf8(bytes.to_vec()).map_err(|_| "string is not UTF-8".to_string())
}

fn base64(bytes: &[u8]) -> Result<Value, String> {
    serde_json::to_value(k8s_openapi::ByteString(bytes.to_vec())).map_err(|e| e.to_string())
}

fn map_entry(bytes: &[u8], value_as_bytes: bool) -> Result<(String, Value), String> {
    let mut reader = Reader { buf: bytes, pos: 0 };
    let (mut key, mut value) = (String::new(), if value_as_bytes { base64(&[])? } else { json!("") });
    while let Some((number, raw)) = reader.next()? {
        match (number, raw) {
            (1, Raw::Bytes(b)) => key = text(b)?,
            (2, Raw::Bytes(b)) => value = if value_as_bytes { base64(b)? } else { json!(text(b)?) },
            _ => {}
        }
    }
    Ok((key, value))
}

fn decode_message(bytes: &[u8], schema: &[Field]) -> Result<Value, String> {
    let mut out = Map::new();
    let mut reader = Reader { buf: bytes, pos: 0 };
    while let Some((number, raw)) = reader.next()? {
        let Some((_, name, kind)) = schema.iter().find(|(n, _, _)| *n == number) else {
            continue;
        };
        let name = (*name).to_string();
        match (kind, raw) {
            // Go encodes non-pointer fields even at their zero value, which means "unset"
            // there (and `omitempty` in JSON): empty strings and zero numbers are dropped.
            (Kind::Str, Raw::Bytes(b)) => {
                if !b.is_empty() {
                    out.insert(name, json!(text(b)?));
                }
            }
            (Kind::Int, Raw::Varint(v)) => {
                // Negative int32/int64 arrive as 64-bit two's complement.
                if v != 0 {
                    out.insert(name, json!(v as i64));
                }
            }
            (Kind::Bool, Raw::Varint(v)) => {
                if v != 0 || !NON_POINTER_BOOLS.contains(&name.as_str()) {
                    out.insert(name, json!(v != 0));
                }
            }
            (Kind::Time, Raw::Bytes(b)) => {
                let t = decode_message(b, &[(1, "seconds", Kind::Int)])?;
                let secs = t["seconds"].as_i64().unwrap_or(0);
                if let Some(time) = chrono::DateTime::from_timestamp(secs, 0) {
                    out.insert(name, json!(time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)));
                }
            }
            (Kind::IntOrString, Raw::Bytes(b)) => {
                let v = decode_message(
                    b,
                    &[
                        (1, "type", Kind::Int),
                        (2, "intVal", Kind::Int),
                        (3, "strVal", Kind::Str),
                    ],
                )?;
                let value = if v["type"].as_i64() == Some(1) {
                    v["strVal"].clone()
                } else {
                    json!(v["intVal"].as_i64().unwrap_or(0))
                };
                out.insert(name, value);
            }
            (Kind::RepeatedStr, Raw::Bytes(b)) => {
                let list = out.entry(name).or_insert_with(|| json!([]));
                if let Some(items) = list.as_array_mut() {
                    items.push(json!(text(b)?));
                }
            }
            (Kind::MapStrStr | Kind::MapStrBytes, Raw::Bytes(b)) => {
                let (key, value) = map_entry(b, matches!(kind, Kind::MapStrBytes))?;
                let map = out.entry(name).or_insert_with(|| json!({}));
                if let Some(m) = map.as_object_mut() {
                    m.insert(key, value);
                }
            }
            (Kind::Msg(sub), Raw::Bytes(b)) => {
                out.insert(name, decode_message(b, sub)?);
            }
            (Kind::RepeatedMsg(sub), Raw::Bytes(b)) => {
                let item = decode_message(b, sub)?;
                let list = out.entry(name).or_insert_with(|| json!([]));
                if let Some(items) = list.as_array_mut() {
                    items.push(item);
                }
            }
            _ => return Err(format!("field {number} has an unexpected wire type")),
        }
    }
    Ok(Value::Object(out))
}

/// Decodes a protobuf request body. Err names why (unsupported kind, malformed bytes).
pub fn decode(body: &[u8]) -> Result<Value, String> {
    let envelope = body.strip_prefix(b"k8s\0").ok_or("missing the k8s protobuf magic")?;
    let mut reader = Reader { buf: envelope, pos: 0 };
    let (mut type_meta, mut raw) = (Value::Null, &[][..]);
    while let Some((number, field)) = reader.next()? {
        match (number, field) {
            (1, Raw::Bytes(b)) => type_meta = decode_message(b, TYPE_META)?,
            (2, Raw::Bytes(b)) => raw = b,
            _ => {}
        }
    }
    let api_version = type_meta["apiVersion"].as_str().unwrap_or_default().to_string();
    let kind = type_meta["kind"].as_str().unwrap_or_default().to_string();
    let schema = match (api_version.as_str(), kind.as_str()) {
        ("v1", "ConfigMap") => CONFIG_MAP,
        ("v1", "Secret") => SECRET,
        ("v1", "Namespace") => NAMESPACE,
        ("v1", "Service") => SERVICE,
        _ => {
            return Err(format!(
                "protobuf bodies are accepted for v1 ConfigMap, Secret, Namespace and Service only, not {api_version} {kind}"
            ));
        }
    };
    let mut object = decode_message(raw, schema)?;
    if let Some(map) = object.as_object_mut() {
        map.insert("apiVersion".into(), json!(api_version));
        map.insert("kind".into(), json!(kind));
    }
    Ok(object)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }

    fn bytes_field(number: u64, payload: &[u8], out: &mut Vec<u8>) {
        varint(number << 3 | 2, out);
        varint(payload.len() as u64, out);
        out.extend_from_slice(payload);
    }

    #[test]
    fn decodes_a_configmap_envelope() {
        let mut meta = Vec::new();
        bytes_field(1, b"cm", &mut meta);
        let mut entry = Vec::new();
        bytes_field(1, b"k", &mut entry);
        bytes_field(2, b"v", &mut entry);
        let mut cm = Vec::new();
        bytes_field(1, &meta, &mut cm);
        bytes_field(2, &entry, &mut cm);
        let mut type_meta = Vec::new();
        bytes_field(1, b"v1", &mut type_meta);
        bytes_field(2, b"ConfigMap", &mut type_meta);
        let mut body = b"k8s\0".to_vec();
        bytes_field(1, &type_meta, &mut body);
        bytes_field(2, &cm, &mut body);
        let v = decode(&body).expect("decodes");
        assert_eq!(
            v,
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm"}, "data": {"k": "v"}})
        );
        assert!(decode(b"nope").is_err());
        assert!(decode(&body[..body.len() - 3]).is_err());
    }
}
