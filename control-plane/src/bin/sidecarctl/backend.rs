//! `sidecarctl backend ...`: create, list, show, update, delete and validate backends.

use std::collections::HashMap;

use anyhow::bail;
use sidecar_proto::v1::{self as pb, validate_backend_request::Target};

use crate::{
    cli::{BackendAddArgs, BackendCommand, BackendUpdateArgs, BackendValidateArgs, Format, KeyArgs, ModelLimit, Price},
    client::Usage,
    commands::{Ctx, secret},
    output::{Table, line, list, or_dash, print_fields, print_json, time},
};

/// Runs one `backend` subcommand.
pub(crate) async fn run(ctx: &mut Ctx, command: BackendCommand) -> anyhow::Result<()> {
    match command {
        BackendCommand::Add(args) => add(ctx, args).await,
        BackendCommand::List { pool } => {
            let request = pb::ListBackendsRequest { pool: pool.unwrap_or_default() };
            let resp = ctx.admin.list_backends(request).await?.into_inner();
            match ctx.format {
                Format::Json => print_json(&resp),
                Format::Table => Ok(table(&resp.backends).print()?),
            }
        }
        BackendCommand::Get { id } => {
            let b = ctx.admin.get_backend(pb::GetBackendRequest { id }).await?.into_inner();
            match ctx.format {
                Format::Json => print_json(&b),
                Format::Table => Ok(print_fields(&fields(&b))?),
            }
        }
        BackendCommand::Update(args) => update(ctx, args).await,
        BackendCommand::Rm { id, expected_version } => {
            let request = pb::DeleteBackendRequest { id: id.clone(), expected_resource_version: expected_version };
            let resp = ctx.admin.delete_backend(request).await?.into_inner();
            match ctx.format {
                Format::Json => print_json(&resp),
                Format::Table => line(format_args!("deleted backend {id} (config version {})", resp.config_version)),
            }
        }
        BackendCommand::Validate(args) => validate(ctx, args).await,
    }
}

async fn add(ctx: &mut Ctx, args: BackendAddArgs) -> anyhow::Result<()> {
    let Some(api_key) = key(&args.key)? else {
        return Err(Usage("give the key with --api-key or --api-key-env".into()).into());
    };
    let f = args.fields;
    let spec = pb::BackendSpec {
        name: args.name,
        label: f.label.unwrap_or_default(),
        base_url: args.base_url,
        api_key,
        timeout_seconds: f.timeout.unwrap_or(0),
        rpm_limit: f.rpm,
        tpm_limit: f.tpm.unwrap_or(0),
        window_seconds: f.window_seconds.unwrap_or(0),
        pool: f.pool.unwrap_or_default(),
        enabled: Some(!args.disabled),
        weight: f.weight,
        model_mappings: mappings(&f.models, &f.prices, &f.model_limits, HashMap::new())?,
        regions: f.regions,
        metadata: HashMap::new(),
        source: pb::BackendSource::Api as i32,
        learn_limits: f.learn_limits,
        api: f.api.map_or(pb::BackendApi::Unspecified, |a| a.to_pb()) as i32,
    };
    let request = pb::CreateBackendRequest { backend: Some(spec), validate: f.validate };
    let resp = ctx.admin.create_backend(request).await?.into_inner();
    written(ctx.format, "created", &resp)
}

async fn update(ctx: &mut Ctx, args: BackendUpdateArgs) -> anyhow::Result<()> {
    let f = args.fields;
    let regions = match (args.all_regions, f.regions.is_empty()) {
        (true, _) => Some(pb::StringList { values: vec![] }),
        (false, false) => Some(pb::StringList { values: f.regions }),
        (false, true) => None,
    };
    let model_mappings = match (f.models.is_empty(), f.prices.is_empty() && f.model_limits.is_empty()) {
        (true, true) => None,
        (false, _) => {
            Some(pb::ModelMappings { entries: mappings(&f.models, &f.prices, &f.model_limits, HashMap::new())? })
        }
        (true, false) => {
            // Prices or limits only: the backend's own mappings with those changed.
            let current = ctx.admin.get_backend(pb::GetBackendRequest { id: args.id.clone() }).await?.into_inner();
            Some(pb::ModelMappings { entries: mappings(&[], &f.prices, &f.model_limits, current.model_mappings)? })
        }
    };
    let patch = pb::BackendPatch {
        name: args.name,
        label: f.label,
        base_url: args.base_url,
        api_key: key(&args.key)?,
        timeout_seconds: f.timeout,
        rpm_limit: f.rpm,
        tpm_limit: f.tpm,
        window_seconds: f.window_seconds,
        learn_limits: f.learn_limits,
        pool: f.pool,
        enabled: match (args.enable, args.disable) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        },
        weight: f.weight,
        model_mappings,
        regions,
        metadata: None,
        api: f.api.map_or(pb::BackendApi::Unspecified, |a| a.to_pb()) as i32,
    };
    if patch == pb::BackendPatch::default() && !f.validate {
        return Err(Usage("nothing to change: give at least one field, e.g. --rpm 60 or --disable".into()).into());
    }
    let request = pb::UpdateBackendRequest {
        id: args.id,
        patch: Some(patch),
        expected_resource_version: args.expected_version,
        validate: f.validate,
    };
    let resp = ctx.admin.update_backend(request).await?.into_inner();
    written(ctx.format, "updated", &resp)
}

async fn validate(ctx: &mut Ctx, args: BackendValidateArgs) -> anyhow::Result<()> {
    let target = match (args.id, args.base_url) {
        (Some(id), _) => Target::Id(id),
        (None, Some(base_url)) => Target::Candidate(pb::ValidateTarget {
            base_url,
            api_key: key(&args.key)?.unwrap_or_default(),
            timeout_seconds: args.timeout.unwrap_or(0),
            api: args.api.map_or(pb::BackendApi::Unspecified, |a| a.to_pb()) as i32,
        }),
        (None, None) => {
            return Err(Usage("name a backend, or give --base-url and --api-key".into()).into());
        }
    };
    let request = pb::ValidateBackendRequest { target: Some(target) };
    let resp = ctx.admin.validate_backend(request).await?.into_inner();
    match ctx.format {
        Format::Json => print_json(&resp)?,
        Format::Table => print_fields(&[
            ("ok", resp.ok.to_string()),
            ("http_status", or_dash(resp.http_status)),
            ("message", resp.message.clone()),
            ("latency", format!("{} ms", resp.latency_ms)),
            ("models", list(&resp.models, "-")),
        ])?,
    }
    if !resp.ok {
        bail!("validation failed: {}", resp.message);
    }
    Ok(())
}

/// Prints the result of a create or update.
fn written(format: Format, verb: &str, resp: &pb::BackendResponse) -> anyhow::Result<()> {
    if let Format::Json = format {
        return print_json(resp);
    }
    let b = resp.backend.clone().unwrap_or_default();
    line(format_args!(
        "{verb} backend {} ({}), resource version {}, config version {}",
        b.name, b.id, b.resource_version, resp.config_version
    ))?;
    if let Some(v) = &resp.validation {
        // The server refuses 401/403 itself; other failures (timeouts, 5xx) only warn.
        match v.ok {
            true => line(format_args!(
                "key validated: {} ({} ms, {} models listed)",
                v.message,
                v.latency_ms,
                v.models.len()
            ))?,
            false => eprintln!("warning: key validation did not succeed: {}", v.message),
        }
    }
    Ok(())
}

/// The key from --api-key (`-` = stdin) or --api-key-env, if either was given.
fn key(args: &KeyArgs) -> anyhow::Result<Option<String>> {
    secret(args.api_key.as_deref(), args.api_key_env.as_deref(), "api-key")
}

/// `--model` values as mappings added to `base` (the server fills in the other mapping
/// defaults), then `--price` and `--model-limit` values set on them.
fn mappings(
    models: &[(String, String)],
    prices: &[(String, Price)],
    limits: &[(String, Option<ModelLimit>)],
    mut base: HashMap<String, pb::ModelMapping>,
) -> anyhow::Result<HashMap<String, pb::ModelMapping>> {
    for (canonical, native_id) in models {
        let mapping = pb::ModelMapping { native_id: native_id.clone(), ..Default::default() };
        if base.insert(canonical.clone(), mapping).is_some() {
            return Err(Usage(format!("--model {canonical} is given more than once")).into());
        }
    }
    let mut priced = std::collections::HashSet::new();
    for (canonical, price) in prices {
        if !priced.insert(canonical) {
            return Err(Usage(format!("--price {canonical} is given more than once")).into());
        }
        let Some(mapping) = base.get_mut(canonical) else {
            return Err(Usage(format!(
                "--price {canonical}: the backend has no model {canonical}; add it with --model"
            ))
            .into());
        };
        mapping.cost = Some(price.to_cost());
    }
    let mut limited = std::collections::HashSet::new();
    for (canonical, limit) in limits {
        if !limited.insert(canonical) {
            return Err(Usage(format!("--model-limit {canonical} is given more than once")).into());
        }
        let Some(mapping) = base.get_mut(canonical) else {
            return Err(Usage(format!(
                "--model-limit {canonical}: the backend has no model {canonical}; add it with --model"
            ))
            .into());
        };
        mapping.rpm_limit = limit.map(|l| l.rpm);
        mapping.tpm_limit = limit.and_then(|l| l.tpm);
        mapping.window_seconds = limit.and_then(|l| l.window_seconds);
    }
    Ok(base)
}

/// `CANONICAL=RPM[/TPM][@SECONDS]` of the models with their own limits, sorted.
fn model_limits(b: &pb::Backend) -> Vec<String> {
    let mut out: Vec<String> = b
        .model_mappings
        .iter()
        .filter_map(|(name, m)| {
            let limits = match (m.rpm_limit, m.tpm_limit) {
                (None, None) => return None,
                (Some(rpm), None) => format!("{name}={rpm}"),
                (rpm, Some(tpm)) => format!("{name}={}/{tpm}", rpm.map_or("-".to_owned(), |r| r.to_string())),
            };
            Some(match m.window_seconds {
                Some(w) => format!("{limits}@{w}s"),
                None => limits,
            })
        })
        .collect();
    out.sort_unstable();
    out
}

/// Canonical model names, sorted.
fn model_names(b: &pb::Backend) -> Vec<&str> {
    let mut names: Vec<&str> = b.model_mappings.keys().map(String::as_str).collect();
    names.sort_unstable();
    names
}

/// The backends table.
fn table(backends: &[pb::Backend]) -> Table {
    let mut t = Table::new(&["ID", "NAME", "POOL", "API", "STATUS", "RPM", "TPM", "MODELS", "KEY", "URL"]);
    for b in backends {
        t.row(vec![
            b.id.clone(),
            b.name.clone(),
            b.pool.clone(),
            crate::output::api_name(b.api).to_owned(),
            crate::output::status_name(b.status).to_owned(),
            b.rpm_limit.to_string(),
            or_dash(b.tpm_limit),
            list(&model_names(b), "-"),
            b.api_key_masked.clone(),
            b.base_url.clone(),
        ]);
    }
    t
}

/// Each priced model as `CANONICAL=INPUT/OUTPUT[/CACHE_READ/CACHE_WRITE]`, USD per 1M
/// tokens (the form `--price` takes).
fn prices(b: &pb::Backend) -> Vec<String> {
    model_names(b)
        .into_iter()
        .filter_map(|name| {
            let price = Price::of(b.model_mappings[name].cost.as_ref()?);
            price.0.iter().any(|p| *p > 0.0).then(|| format!("{name}={price}"))
        })
        .collect()
}

/// One backend as `key: value` rows.
fn fields(b: &pb::Backend) -> Vec<(&'static str, String)> {
    let models: Vec<String> = model_names(b)
        .into_iter()
        .map(|name| match &b.model_mappings[name].native_id {
            native if native != name && !native.is_empty() => format!("{name}={native}"),
            _ => name.to_owned(),
        })
        .collect();
    let mut metadata: Vec<String> = b.metadata.iter().map(|(k, v)| format!("{k}={v}")).collect();
    metadata.sort_unstable();
    vec![
        ("id", b.id.clone()),
        ("name", b.name.clone()),
        ("label", b.label.clone()),
        ("pool", b.pool.clone()),
        ("api", crate::output::api_name(b.api).to_owned()),
        ("status", crate::output::status_name(b.status).to_owned()),
        ("enabled", b.enabled.to_string()),
        ("base_url", b.base_url.clone()),
        ("api_key", b.api_key_masked.clone()),
        ("api_key_key_id", b.api_key_key_id.clone()),
        ("rpm_limit", b.rpm_limit.to_string()),
        ("tpm_limit", or_dash(b.tpm_limit)),
        ("window_seconds", b.window_seconds.to_string()),
        ("learn_limits", b.learn_limits.to_string()),
        ("timeout_seconds", b.timeout_seconds.to_string()),
        ("weight", b.weight.to_string()),
        ("models", list(&models, "-")),
        ("prices_usd_per_1m", list(&prices(b), "-")),
        ("model_limits_per_min", list(&model_limits(b), "-")),
        ("regions", list(&b.regions, "all")),
        ("metadata", list(&metadata, "-")),
        ("source", crate::output::source_name(b.source).to_owned()),
        ("created", time(b.created_at_ms)),
        ("updated", time(b.updated_at_ms)),
        ("resource_version", b.resource_version.to_string()),
        ("cooldown_until", time(b.cooldown_until_ms)),
        ("consecutive_429s", b.consecutive_429_count.to_string()),
    ]
}
