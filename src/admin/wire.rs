//! XXL-JOB wire DTOs: the only place that spells the protocol's field names.
//!
//! Readers are as lenient as the admin's Gson (protocol §1.3): unknown keys are ignored, missing
//! keys and `null` take defaults, numbers may come as strings or integral doubles, and a string
//! field may hold a number. Writers emit every payload under both `content` (2.x admins) and
//! `data` (3.3+ admins), so both generations read our answers.

use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use serde::de::{self, DeserializeOwned, DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::job::{BlockStrategy, Callback, Glue, GlueKind, JobId, LogId, Outcome, Trigger};

/// The response envelope (`ReturnT` up to 3.2, `Response` from 3.3).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReturnT<T: Serialize> {
    /// 200 or 500.
    pub code: i32,
    /// `"Success"` on success (3.2+ form), the error text otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub msg: Option<String>,
    /// The payload for 2.x admins.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<T>,
    /// The same payload for 3.3+ admins.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<T>,
}

/// The `msg` of every successful answer.
pub const SUCCESS_MSG: &str = "Success";

impl<T: Serialize + Clone> ReturnT<T> {
    /// Success with a payload under both keys.
    pub fn success_with(payload: T) -> Self {
        Self {
            code: 200,
            msg: Some(SUCCESS_MSG.into()),
            content: Some(payload.clone()),
            data: Some(payload),
        }
    }
}

impl ReturnT<()> {
    /// Success without a payload: `{"code":200,"msg":"Success"}`.
    pub fn success() -> Self {
        Self {
            code: 200,
            msg: Some(SUCCESS_MSG.into()),
            content: None,
            data: None,
        }
    }

    /// Failure: `{"code":500,"msg":…}`.
    pub fn fail(msg: impl Into<String>) -> Self {
        Self {
            code: 500,
            msg: Some(msg.into()),
            content: None,
            data: None,
        }
    }
}

/// The whole `{"code":200,"msg":"Success","content":P,"data":P}` text, with `P` encoded straight
/// into it twice: a `/log` page can be megabytes, and cloning it to fill both keys (as
/// [`ReturnT::success_with`] does) would hold two more copies of it.
///
/// # Errors
/// `payload` cannot be encoded as JSON.
pub fn success_json<T: Serialize + ?Sized>(
    payload: &T,
    size_hint: usize,
) -> serde_json::Result<String> {
    let mut out = Vec::with_capacity(2 * size_hint + 64);
    out.extend_from_slice(br#"{"code":200,"msg":"Success","content":"#);
    serde_json::to_writer(&mut out, payload)?;
    out.extend_from_slice(br#","data":"#);
    serde_json::to_writer(&mut out, payload)?;
    out.push(b'}');
    // serde_json writes UTF-8 only; the check cannot fail and copies nothing.
    String::from_utf8(out).map_err(|e| de::Error::custom(e.to_string()))
}

/// Which generation of the admin's HTTP client sent a request, as far as its headers tell.
///
/// Only `/kill` needs it: admins up to 3.2.0 post with `XxlJobRemotingUtil`, which sends the
/// unusual `Accept-Charset: application/json;charset=UTF-8`; 3.3.0+ post with xxl-tool's
/// `HttpTool`, which sends `Accept-Charset: UTF-8` (protocol §1.4). 3.1.1 and 3.2.0 send the same
/// request and read the same `ReturnT` fields, so no answer can tell those two apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminClient {
    /// `XxlJobRemotingUtil`: admins 2.4.x – 3.2.0.
    RemotingUtil,
    /// Anything else: 3.3.0+ admins, `xxl-edge trigger`, curl.
    Other,
}

impl AdminClient {
    /// The `Accept-Charset` value only `XxlJobRemotingUtil` sends.
    pub const REMOTING_UTIL_ACCEPT_CHARSET: &'static str = "application/json;charset=UTF-8";

    /// Classifies a request by its `Accept-Charset` header.
    pub fn from_accept_charset(value: Option<&str>) -> Self {
        match value {
            Some(v) if v.trim() == Self::REMOTING_UTIL_ACCEPT_CHARSET => Self::RemotingUtil,
            _ => Self::Other,
        }
    }
}

/// The text of `/kill` for a job that has no worker (`ExecutorBizImpl.kill`).
pub const JOB_THREAD_ALREADY_KILLED: &str = "job thread already killed.";

/// `/kill`'s answer when the job has no worker.
///
/// Every admin records `msg` as the run's handle message ("人为操作，主动终止:" + msg,
/// `JobLogController.logKill` in 2.4.2 – 3.4.2). The reference executors up to 3.1.1 put the text
/// in `msg`; from 3.2.0 they answer `msg:"Success"` and move the text to the payload. So an admin
/// that posts with `XxlJobRemotingUtil` gets the text in `msg` (which is what a 2.4.x – 3.1.1
/// admin records from its own executor, and for a 3.2.0 admin replaces a bare "Success"); every
/// other client gets exactly the 3.2+ form.
pub fn kill_without_worker(client: AdminClient) -> ReturnT<&'static str> {
    let mut r = ReturnT::success_with(JOB_THREAD_ALREADY_KILLED);
    if client == AdminClient::RemotingUtil {
        r.msg = Some(JOB_THREAD_ALREADY_KILLED.into());
    }
    r
}

/// Parses a request body the way Gson parses it into a request class: the body must be one JSON
/// object. serde's derived structs also accept an array (fields by position), so `[]` would read
/// as an object of defaults where the reference answers `request error:`.
///
/// # Errors
/// Malformed JSON, a value that is not an object, a field of the wrong type, or trailing data.
pub fn from_json_object<T: DeserializeOwned>(body: &[u8]) -> serde_json::Result<T> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = ObjectOnly(PhantomData).deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

/// Hands a JSON object to `T` and refuses every other kind of value (serde's default visitor
/// methods answer "invalid type: …, expected a JSON object").
struct ObjectOnly<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> DeserializeSeed<'de> for ObjectOnly<T> {
    type Value = T;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<T, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectOnly<T> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        T::deserialize(de::value::MapAccessDeserializer::new(map))
    }
}

/// `/run` (and `/trigger`) body: `TriggerParam` / `TriggerRequest`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TriggerParam {
    /// Job id.
    #[serde(deserialize_with = "lenient_i32")]
    pub job_id: i32,
    /// BEAN handler name.
    #[serde(deserialize_with = "lenient_string")]
    pub executor_handler: Option<String>,
    /// Job parameter.
    #[serde(deserialize_with = "lenient_string")]
    pub executor_params: Option<String>,
    /// Block strategy name.
    #[serde(deserialize_with = "lenient_string")]
    pub executor_block_strategy: Option<String>,
    /// Timeout in seconds; `> 0` enables it.
    #[serde(deserialize_with = "lenient_i32")]
    pub executor_timeout: i32,
    /// Log id.
    #[serde(deserialize_with = "lenient_i64")]
    pub log_id: i64,
    /// Trigger time, epoch ms.
    #[serde(deserialize_with = "lenient_i64")]
    pub log_date_time: i64,
    /// `BEAN` or a `GLUE_*` name.
    #[serde(deserialize_with = "lenient_string")]
    pub glue_type: Option<String>,
    /// Script source.
    #[serde(deserialize_with = "lenient_string")]
    pub glue_source: Option<String>,
    /// Script version, epoch ms.
    #[serde(deserialize_with = "lenient_i64")]
    pub glue_updatetime: i64,
    /// Shard index.
    #[serde(deserialize_with = "lenient_i32")]
    pub broadcast_index: i32,
    /// Shard total.
    #[serde(deserialize_with = "lenient_i32")]
    pub broadcast_total: i32,
}

/// Why a `/run` body cannot become a [`Trigger`]; the messages are the reference's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TriggerParamError {
    /// Unknown, absent or unsupported (`GLUE_GROOVY`) glue type.
    #[error("glueType[{0}] is not valid.")]
    InvalidGlueType(String),
}

impl TryFrom<TriggerParam> for Trigger {
    type Error = TriggerParamError;

    fn try_from(p: TriggerParam) -> Result<Self, Self::Error> {
        let glue = match p.glue_type.as_deref() {
            Some("BEAN") => Glue::Bean,
            Some(name) => match GlueKind::parse(name).filter(|k| k.wire_name() == name) {
                Some(kind) => Glue::Script {
                    kind,
                    source: p.glue_source.unwrap_or_default(),
                    updated: p.glue_updatetime,
                },
                // GLUE_GROOVY needs a JVM; it is refused like any unknown type.
                None => return Err(TriggerParamError::InvalidGlueType(name.to_string())),
            },
            None => return Err(TriggerParamError::InvalidGlueType("null".into())),
        };
        Ok(Trigger {
            job_id: JobId(p.job_id),
            log_id: LogId(p.log_id),
            log_date_time: p.log_date_time,
            handler: p.executor_handler.unwrap_or_default(),
            params: p.executor_params,
            block: BlockStrategy::from_wire(p.executor_block_strategy.as_deref()),
            timeout: (p.executor_timeout > 0)
                .then(|| Duration::from_secs(u64::from(p.executor_timeout.unsigned_abs()))),
            glue,
            shard_index: p.broadcast_index,
            shard_total: p.broadcast_total,
        })
    }
}

impl From<&Trigger> for TriggerParam {
    fn from(t: &Trigger) -> Self {
        let (glue_source, glue_updatetime) = match &t.glue {
            Glue::Bean => (String::new(), 0),
            Glue::Script {
                source, updated, ..
            } => (source.clone(), *updated),
        };
        Self {
            job_id: t.job_id.0,
            executor_handler: Some(t.handler.clone()),
            executor_params: t.params.clone(),
            executor_block_strategy: Some(t.block.as_str().into()),
            executor_timeout: t
                .timeout
                .map_or(0, |d| i32::try_from(d.as_secs()).unwrap_or(i32::MAX)),
            log_id: t.log_id.0,
            log_date_time: t.log_date_time,
            glue_type: Some(t.glue.type_name().to_string()),
            glue_source: Some(glue_source),
            glue_updatetime,
            broadcast_index: t.shard_index,
            broadcast_total: t.shard_total,
        }
    }
}

impl Serialize for TriggerParam {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("jobId", &self.job_id)?;
        m.serialize_entry("executorHandler", &self.executor_handler)?;
        if let Some(p) = &self.executor_params {
            m.serialize_entry("executorParams", p)?;
        }
        m.serialize_entry("executorBlockStrategy", &self.executor_block_strategy)?;
        m.serialize_entry("executorTimeout", &self.executor_timeout)?;
        m.serialize_entry("logId", &self.log_id)?;
        m.serialize_entry("logDateTime", &self.log_date_time)?;
        m.serialize_entry("glueType", &self.glue_type)?;
        m.serialize_entry("glueSource", &self.glue_source)?;
        m.serialize_entry("glueUpdatetime", &self.glue_updatetime)?;
        m.serialize_entry("broadcastIndex", &self.broadcast_index)?;
        m.serialize_entry("broadcastTotal", &self.broadcast_total)?;
        m.end()
    }
}

/// `/idleBeat` and `/kill` body.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct JobIdParam {
    /// Job id.
    #[serde(deserialize_with = "lenient_i32")]
    pub job_id: i32,
}

/// `/log` body; `logDateTime` is the 3.5 spelling of `logDateTim`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct LogParam {
    /// Trigger time (2.4–3.4 spelling).
    #[serde(deserialize_with = "lenient_i64")]
    pub log_date_tim: i64,
    /// Trigger time (3.5 spelling).
    #[serde(deserialize_with = "lenient_i64", skip_serializing)]
    pub log_date_time: i64,
    /// Log id.
    #[serde(deserialize_with = "lenient_i64")]
    pub log_id: i64,
    /// First line wanted, 1-based.
    #[serde(deserialize_with = "lenient_i32")]
    pub from_line_num: i32,
    /// xxl-edge's own `trigger` command asks for the run's result with the page, as data. No
    /// admin sends it, so what admins get is unchanged.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub xxl_edge_result: bool,
}

/// A finished run's result, sent with a `/log` page to xxl-edge's own tools that ask for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunResult {
    /// The callback's `handleCode`.
    pub handle_code: i32,
    /// The callback's `handleMsg`.
    pub handle_msg: Option<String>,
}

/// `/log` payload (`LogResult`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogResult {
    /// Echo of the request.
    pub from_line_num: i32,
    /// Number of the last line returned, 0 when none.
    pub to_line_num: i32,
    /// The lines, each followed by `\n`.
    pub log_content: String,
    /// True only when the log does not exist.
    pub is_end: bool,
    /// The run's result once it finished, only when the request asked for it
    /// ([`LogParam::xxl_edge_result`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xxl_edge_result: Option<RunResult>,
}

/// `/api/registry` and `/api/registryRemove` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistryParam {
    /// Always `EXECUTOR`.
    pub registry_group: String,
    /// The appname.
    pub registry_key: String,
    /// The executor's address.
    pub registry_value: String,
}

impl RegistryParam {
    /// An executor registration.
    pub fn executor(app_name: &str, address: &str) -> Self {
        Self {
            registry_group: "EXECUTOR".into(),
            registry_key: app_name.into(),
            registry_value: address.into(),
        }
    }
}

/// One element of the `/api/callback` array (`HandleCallbackParam`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HandleCallbackParam {
    /// Log id.
    pub log_id: i64,
    /// Trigger time echo (spelled without the `e`).
    pub log_date_tim: i64,
    /// Result code.
    pub handle_code: i32,
    /// Result message, omitted when null.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub handle_msg: Option<String>,
}

impl From<&Callback> for HandleCallbackParam {
    fn from(c: &Callback) -> Self {
        Self {
            log_id: c.log_id.0,
            log_date_tim: c.log_date_time,
            handle_code: c.outcome.code,
            handle_msg: c.outcome.msg.clone(),
        }
    }
}

impl From<HandleCallbackParam> for Callback {
    fn from(p: HandleCallbackParam) -> Self {
        Self {
            log_id: LogId(p.log_id),
            log_date_time: p.log_date_tim,
            outcome: Outcome::code(p.handle_code, p.handle_msg),
        }
    }
}

/// What the admin answers: only `code == 200` matters (protocol §1.2).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct AdminReply {
    /// Result code.
    #[serde(deserialize_with = "lenient_i32")]
    pub code: i32,
    /// Message, if any.
    #[serde(deserialize_with = "lenient_string")]
    pub msg: Option<String>,
}

/// Reply envelope read by clients of the executor (`xxl-edge trigger`, tests).
#[derive(Debug, Clone, Deserialize)]
pub struct ExecutorReply<T> {
    /// Result code.
    #[serde(default, deserialize_with = "lenient_i32")]
    pub code: i32,
    /// Message.
    #[serde(default, deserialize_with = "lenient_string")]
    pub msg: Option<String>,
    /// 2.x payload.
    #[serde(default = "none")]
    pub content: Option<T>,
    /// 3.3+ payload.
    #[serde(default = "none")]
    pub data: Option<T>,
}

fn none<T>() -> Option<T> {
    None
}

impl<T> ExecutorReply<T> {
    /// The payload under either key.
    pub fn payload(self) -> Option<T> {
        self.data.or(self.content)
    }
}

/// Integers the way Gson reads them: numbers, numeric strings, integral doubles, null as 0.
fn lenient_i64<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = i64;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an integer, or a string holding one")
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<i64, E> {
            Ok(v)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<i64, E> {
            i64::try_from(v).map_err(|_| E::custom(format!("number {v} out of range")))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<i64, E> {
            if v.fract() == 0.0 && v >= i64::MIN as f64 && v <= i64::MAX as f64 {
                Ok(v as i64)
            } else {
                Err(E::custom(format!("expected an integer but was {v}")))
            }
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<i64, E> {
            let t = v.trim();
            if let Ok(n) = t.parse::<i64>() {
                return Ok(n);
            }
            match t.parse::<f64>() {
                Ok(f) => self.visit_f64(f),
                Err(_) => Err(E::custom(format!("expected an integer but was \"{v}\""))),
            }
        }
        fn visit_unit<E: de::Error>(self) -> Result<i64, E> {
            Ok(0)
        }
        fn visit_none<E: de::Error>(self) -> Result<i64, E> {
            Ok(0)
        }
        fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<i64, D2::Error> {
            d.deserialize_any(V)
        }
    }
    d.deserialize_any(V)
}

fn lenient_i32<'de, D: Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
    let v = lenient_i64(d)?;
    i32::try_from(v).map_err(|_| de::Error::custom(format!("number {v} out of range for an int")))
}

/// Strings the way Gson reads them: a number or boolean becomes its text, null stays absent.
fn lenient_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Option<String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
            Ok(Some(v))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Self::Value, D2::Error> {
            d.deserialize_any(V)
        }
    }
    d.deserialize_any(V)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trigger_param_is_lenient_like_gson() {
        let p: TriggerParam = serde_json::from_str(
            r#"{"jobId":"7","logId":2.0,"executorTimeout":null,"executorParams":12,"x":{"y":1},"glueType":"BEAN","executorHandler":"h"}"#,
        )
        .unwrap();
        assert_eq!(p.job_id, 7);
        assert_eq!(p.log_id, 2);
        assert_eq!(p.executor_timeout, 0);
        assert_eq!(p.executor_params.as_deref(), Some("12"));
        let t = Trigger::try_from(p).unwrap();
        assert_eq!(t.glue, Glue::Bean);
        assert_eq!(t.timeout, None);
    }

    #[test]
    fn glue_type_errors_use_reference_messages() {
        let p: TriggerParam = serde_json::from_str(r#"{"jobId":5,"logId":5001}"#).unwrap();
        assert_eq!(
            Trigger::try_from(p).unwrap_err().to_string(),
            "glueType[null] is not valid."
        );
        for g in ["GLUE_XYZ", "GLUE_GROOVY", "shell"] {
            let p = TriggerParam {
                glue_type: Some(g.into()),
                ..Default::default()
            };
            assert_eq!(
                Trigger::try_from(p).unwrap_err().to_string(),
                format!("glueType[{g}] is not valid.")
            );
        }
    }

    #[test]
    fn envelope_carries_both_payload_keys() {
        let s = serde_json::to_string(&ReturnT::success_with("x")).unwrap();
        assert_eq!(
            s,
            r#"{"code":200,"msg":"Success","content":"x","data":"x"}"#
        );
        assert_eq!(
            serde_json::to_string(&ReturnT::success()).unwrap(),
            r#"{"code":200,"msg":"Success"}"#
        );
    }

    #[test]
    fn bad_numbers_are_errors() {
        assert!(serde_json::from_str::<TriggerParam>(r#"{"jobId":"x"}"#).is_err());
        assert!(serde_json::from_str::<TriggerParam>(r#"{"jobId":1.5}"#).is_err());
        assert!(serde_json::from_str::<TriggerParam>(r#"{"jobId":9999999999}"#).is_err());
    }

    #[test]
    fn request_bodies_must_be_objects() {
        let p: JobIdParam = from_json_object(br#" {"jobId":"7","x":[1]} "#).unwrap();
        assert_eq!(p.job_id, 7);
        let p: TriggerParam = from_json_object(br#"{"jobId":1,"glueType":"BEAN"}"#).unwrap();
        assert_eq!(p.glue_type.as_deref(), Some("BEAN"));
        let p: LogParam = from_json_object(br#"{"logId":5,"fromLineNum":2.0}"#).unwrap();
        assert_eq!((p.log_id, p.from_line_num), (5, 2));
        // Derived structs alone take an array as fields by position; the body parser must not.
        assert_eq!(serde_json::from_str::<JobIdParam>("[7]").unwrap().job_id, 7);
        for body in [
            "[]",
            "[7]",
            "[{\"jobId\":1}]",
            "\"\"",
            "7",
            "null",
            "true",
            "",
            "{",
            "{} x",
        ] {
            let e = from_json_object::<JobIdParam>(body.as_bytes()).unwrap_err();
            assert!(!e.to_string().is_empty(), "{body}");
            assert!(
                from_json_object::<LogParam>(body.as_bytes()).is_err(),
                "{body}"
            );
            assert!(
                from_json_object::<TriggerParam>(body.as_bytes()).is_err(),
                "{body}"
            );
        }
        let e = from_json_object::<JobIdParam>(b"[]")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("invalid type: sequence, expected a JSON object"),
            "{e}"
        );
    }

    #[test]
    fn success_json_matches_the_envelope() {
        let page = LogResult {
            from_line_num: 1,
            to_line_num: 2,
            log_content: "a \"q\" <b>\n".into(),
            is_end: false,
            xxl_edge_result: None,
        };
        assert_eq!(
            success_json(&page, 0).unwrap(),
            serde_json::to_string(&ReturnT::success_with(page)).unwrap()
        );
    }

    #[test]
    fn kill_without_worker_puts_the_text_where_each_admin_reads_it() {
        let legacy = AdminClient::from_accept_charset(Some("application/json;charset=UTF-8"));
        assert_eq!(legacy, AdminClient::RemotingUtil);
        for other in [None, Some("UTF-8"), Some("utf-8"), Some("")] {
            assert_eq!(AdminClient::from_accept_charset(other), AdminClient::Other);
        }
        assert_eq!(
            serde_json::to_string(&kill_without_worker(legacy)).unwrap(),
            r#"{"code":200,"msg":"job thread already killed.","content":"job thread already killed.","data":"job thread already killed."}"#
        );
        assert_eq!(
            serde_json::to_string(&kill_without_worker(AdminClient::Other)).unwrap(),
            r#"{"code":200,"msg":"Success","content":"job thread already killed.","data":"job thread already killed."}"#
        );
    }

    #[test]
    fn callback_omits_null_msg() {
        let c = HandleCallbackParam {
            log_id: 1001,
            log_date_tim: 1717171717000,
            handle_code: 200,
            handle_msg: None,
        };
        assert_eq!(
            serde_json::to_string(&[c]).unwrap(),
            r#"[{"logId":1001,"logDateTim":1717171717000,"handleCode":200}]"#
        );
    }
}
