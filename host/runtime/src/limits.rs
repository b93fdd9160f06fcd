//! Every bound Sluice puts on guests and clients, with its default.
//!
//! [`Limits`] holds the runtime's server-wide values (plain data, set from
//! `sluice serve` flags by the CLI, which builds them from the same table).
//! Per-function settings may lower or raise the per-invocation ones within
//! the engine-wide caps; [`FunctionLimits`] is the resolved set one function
//! runs with.

use std::time::Duration;

use sluice_store::FunctionSettings;

const MIB: u64 = 1 << 20;

/// The table of the runtime's limits, one entry per `sluice serve` flag:
/// `doc; field: type = default, "flag";`. [`Limits`] is made from it
/// here; the CLI makes its clap arguments from the same table, so a limit's
/// doc, default and flag are written once (as wasmtime's `cli-flags` maps
/// its flags onto `wasmtime::Config`). `$callback` is a macro taking the
/// table.
#[macro_export]
macro_rules! runtime_limits {
    ($callback:ident) => {
        $callback! {
            Limits;
            /// Default wall-clock limit of one invocation, in milliseconds. Defends
            /// against guests that never finish (an infinite loop ends with 504).
            timeout_ms: u64 = 30_000, "default-timeout-ms";
            /// Largest `timeout_ms` a function may ask for.
            max_timeout_ms: u64 = 15 * 60 * 1_000, "max-timeout-ms";
            /// Default linear-memory cap of one instance, in MiB. Defends the host's
            /// memory against a guest that allocates without end.
            memory_mb: u64 = 128, "default-memory-mb";
            /// Largest `memory_mb` a function may ask for; also the size of one
            /// memory slot in the instance pool.
            max_memory_mb: u64 = 1024, "max-memory-mb";
            /// The sum of the memory limits (`memory_mb`) of instances running at
            /// once, across all functions: a size (`12G`, `800M`) or a share of the
            /// machine's memory read at start (`50%`; the control group's limit
            /// when lower, as in a container). Defends the host against
            /// many memory-hungry calls at once (each within its own limit): a call
            /// that would pass it waits up to `--queue-timeout-ms`, then gets 503
            /// with `Retry-After`; a delivery waits in the queue instead.
            memory_budget: $crate::limits::MemoryBudget = $crate::limits::MemoryBudget::Percent(50), "memory-budget";
            /// Default number of instances of one function that may run at once.
            /// Defends other functions' share of the pool against one busy function.
            max_concurrency: u32 = 100, "default-max-concurrency";
            /// How long a call over its function's concurrency cap waits for a slot
            /// before it is answered 429 with `Retry-After`, in milliseconds.
            queue_timeout_ms: u64 = 1_000, "queue-timeout-ms";
            /// Default cap on a request body sent to a function, in bytes (413 past it).
            max_request_bytes: u64 = 16 << 20, "max-request-bytes";
            /// Default cap on a response body a function produces, in bytes (413 past
            /// it). Defends the host's memory against a guest that writes without end.
            max_response_bytes: u64 = 16 << 20, "max-response-bytes";
            /// Largest component accepted at deploy, in bytes. Components built by
            /// componentize-py or componentize-js are 12 to 18 MiB.
            max_component_bytes: u64 = 128 << 20, "max-component-bytes";
            /// WebAssembly stack of one instance, in bytes. Defends the host's stack
            /// against unbounded guest recursion (the guest traps with "call stack
            /// exhausted"). Engine-wide: wasmtime sets it per engine.
            max_wasm_stack: usize = 1 << 20, "max-wasm-stack";
            /// Threads of the long-call pool: a call that has run past its first
            /// 4 ms slice of CPU moves there, onto threads of a lower OS priority,
            /// sharing them round-robin. Defends short calls against busy guests:
            /// they never queue behind long ones. 0: one per CPU.
            long_call_threads: usize = 0, "long-call-threads";
            /// Instances that may exist at once across all functions: the size of
            /// wasmtime's pooling allocator. Calls past it wait, then get 503.
            pool_instances: u32 = 1_000, "pool-instances";
            /// Linear memory (and table) of a freed pool slot kept resident, in KiB:
            /// reset in place (only the pages the guest dirtied, found with Linux's
            /// PAGEMAP_SCAN where the kernel has it) instead of released to the
            /// kernel and faulted in again by the next instance. A function whose
            /// instances dirty no more than this is reset without a system call to
            /// release pages (so without a TLB shootdown across cores); every example
            /// guest dirties 12 KiB. What each slot keeps is what a function idle
            /// since its last call costs: at most this much per slot, so at most
            /// `--pool-instances` times this in all (`sluice_pool_resident_bytes`).
            pool_keep_resident_kib: u64 = 32, "pool-keep-resident-kib";
            /// Regions of freed pool slots (an instance's memories, tables and
            /// stack) whose pages are released to the kernel together, in one
            /// `process_madvise` call on Linux (one `madvise` each elsewhere): one
            /// system call, and on recent kernels one TLB shootdown, per batch
            /// instead of per instance. Until its batch fills, a freed slot is not
            /// reused and keeps its dirty pages resident (at most this many regions
            /// per CPU); a second after the last call ends, the server releases
            /// whatever still waits. 1 (or 0) releases every slot at once.
            pool_decommit_batch: usize = 16, "pool-decommit-batch";
            /// Bytes the host copies out of a guest in one host call (a list or
            /// string argument), wasmtime's "hostcall fuel". Defends the host's
            /// memory against a guest passing a giant value to an import.
            hostcall_fuel: usize = 16 << 20, "hostcall-fuel";
            /// Resource handles (streams, header maps, requests, buckets) one call
            /// may hold at once. Defends the host against a guest that creates
            /// handles and never drops them.
            max_resources: usize = 10_000, "max-resources";
            /// Elements one guest table may hold. Defends against table growth bombs.
            max_table_elements: usize = 20_000, "max-table-elements";
            /// Bytes of guest stdout and of stderr kept per invocation; the rest is
            /// dropped. Defends the host against a guest that logs without end.
            max_output_bytes: usize = 64 << 10, "max-output-bytes";
            /// Events one call may publish through the `publisher` import. Defends
            /// the router against a guest that publishes in a tight loop.
            max_publish_per_call: u32 = 1_000, "max-publish-per-call";
            /// Depth of a chain of function-to-function calls (A calls B calls C
            /// ...). Defends against calls that recurse forever: past it the call
            /// fails in the caller with `loop-detected`.
            max_call_depth: u32 = 16, "max-call-depth";
            /// Longest key-value key, in bytes.
            kv_max_key_bytes: usize = 1024, "kv-max-key-bytes";
            /// Largest key-value value, in bytes.
            kv_max_value_bytes: usize = 1 << 20, "kv-max-value-bytes";
            /// Most keys in one key-value bucket. Defends the disk against a guest
            /// that writes keys without end.
            kv_max_keys: u64 = 10_000, "kv-max-keys";
            /// Log lines kept per function (older ones are dropped).
            log_lines_per_function: usize = 1_000, "log-lines-per-function";
            /// Functions the server holds at most. Defends the store and memory
            /// against unbounded deploys.
            max_functions: usize = 10_000, "max-functions";
            /// Compiled code of a function idle this long is dropped from memory and
            /// reloaded from its on-disk artifact on the next call, in seconds.
            idle_unload_secs: u64 = 300, "idle-unload-secs";
        }
    };
}

/// Makes a plain struct `$name` and its `Default` from a table of limits.
#[macro_export]
macro_rules! plain_limits {
    ($name:ident; $( $(#[doc = $doc:expr])* $field:ident : $ty:ty = $default:expr, $flag:literal; )*) => {
        /// Limits, each a named `sluice serve` flag; see their docs.
        #[derive(Clone, Debug)]
        pub struct $name {
            $( $(#[doc = $doc])* pub $field: $ty, )*
        }

        impl Default for $name {
            fn default() -> Self {
                $name { $( $field: $default, )* }
            }
        }
    };
}

runtime_limits!(plain_limits);

/// `--memory-budget`: a size or a share of the machine's memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryBudget {
    /// This many bytes.
    Bytes(u64),
    /// This percentage of the machine's memory.
    Percent(u8),
}

impl std::fmt::Display for MemoryBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MemoryBudget::Bytes(bytes) if bytes % (1 << 30) == 0 => write!(f, "{}G", bytes >> 30),
            MemoryBudget::Bytes(bytes) if bytes % (1 << 20) == 0 => write!(f, "{}M", bytes >> 20),
            MemoryBudget::Bytes(bytes) => write!(f, "{bytes}"),
            MemoryBudget::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl std::str::FromStr for MemoryBudget {
    type Err = String;

    fn from_str(text: &str) -> Result<MemoryBudget, String> {
        let text = text.trim();
        if let Some(percent) = text.strip_suffix('%') {
            return match percent.trim().parse::<u8>() {
                Ok(p) if (1..=100).contains(&p) => Ok(MemoryBudget::Percent(p)),
                _ => Err(format!("{text:?}: a percentage from 1% to 100%")),
            };
        }
        let lower = text.to_ascii_lowercase();
        let digits = lower.trim_end_matches(|c: char| c.is_ascii_alphabetic());
        let unit = &lower[digits.len()..];
        let scale: u64 = match unit {
            "" | "b" => 1,
            "k" | "kb" | "kib" => 1 << 10,
            "m" | "mb" | "mib" => 1 << 20,
            "g" | "gb" | "gib" => 1 << 30,
            "t" | "tb" | "tib" => 1 << 40,
            _ => {
                return Err(format!(
                    "{text:?}: a size such as 800M or 12G, or a percentage"
                ));
            }
        };
        let number: u64 = digits
            .trim()
            .parse()
            .map_err(|_| format!("{text:?}: a size such as 800M or 12G, or a percentage"))?;
        number
            .checked_mul(scale)
            .filter(|&bytes| bytes >= 1 << 20)
            .map(MemoryBudget::Bytes)
            .ok_or_else(|| format!("{text:?}: at least 1M"))
    }
}

impl MemoryBudget {
    /// The budget in MiB on a machine with `machine` bytes of memory.
    pub fn mebibytes(self, machine: u64) -> u64 {
        match self {
            MemoryBudget::Bytes(bytes) => bytes >> 20,
            MemoryBudget::Percent(p) => ((u128::from(machine) * u128::from(p) / 100) >> 20) as u64,
        }
        .max(1)
    }
}

/// The memory this process may use, in bytes: the machine's (`MemTotal` of
/// `/proc/meminfo`, or 4 GiB where it cannot be read), or its control
/// group's limit where that is lower (a container's `--memory`: cgroup v2
/// `memory.max`, v1 `memory.limit_in_bytes`).
pub fn machine_memory() -> u64 {
    let total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
        })
        .map_or(4 << 30, |kib| kib << 10);
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    cgroup_limit(&cgroups, |path| std::fs::read_to_string(path).ok())
        .map_or(total, |limit| limit.min(total))
}

/// The lowest memory limit of this process's control groups, from the text
/// of `/proc/self/cgroup` and a reader of files; `None` when there is none.
/// Both the group's own path and the mount's root are read (inside a
/// container the group's path is often not where its files are mounted).
fn cgroup_limit(proc_cgroup: &str, read: impl Fn(&str) -> Option<String>) -> Option<u64> {
    let mut candidates = Vec::new();
    for line in proc_cgroup.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let path = path.trim_end_matches('/');
        if controllers.is_empty() {
            candidates.push(format!("/sys/fs/cgroup{path}/memory.max"));
            candidates.push("/sys/fs/cgroup/memory.max".to_string());
        } else if controllers.split(',').any(|c| c == "memory") {
            candidates.push(format!("/sys/fs/cgroup/memory{path}/memory.limit_in_bytes"));
            candidates.push("/sys/fs/cgroup/memory/memory.limit_in_bytes".to_string());
        }
    }
    candidates
        .iter()
        .filter_map(|path| read(path))
        // "max", or v1's "no limit" (a page short of 2^63), mean none.
        .filter_map(|text| text.trim().parse::<u64>().ok())
        .filter(|&limit| limit > 0 && limit < 1 << 62)
        .min()
}

/// Why a function's settings were refused.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting `{setting}`: {reason}")]
pub struct InvalidSetting {
    /// The setting's name.
    pub setting: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

fn check(
    setting: &'static str,
    value: Option<u64>,
    min: u64,
    max: u64,
    unit: &str,
) -> Result<(), InvalidSetting> {
    match value {
        Some(v) if v < min || v > max => Err(InvalidSetting {
            setting,
            reason: format!("{v} is outside {min}..={max} {unit}"),
        }),
        _ => Ok(()),
    }
}

/// Names of environment variables: POSIX portable names.
fn valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl Limits {
    /// Checks `settings` against these limits.
    pub fn validate(&self, settings: &FunctionSettings) -> Result<(), InvalidSetting> {
        check(
            "timeout_ms",
            settings.timeout_ms,
            1,
            self.max_timeout_ms,
            "ms",
        )?;
        check(
            "memory_mb",
            settings.memory_mb,
            1,
            self.max_memory_mb,
            "MiB",
        )?;
        check(
            "max_concurrency",
            settings.max_concurrency.map(u64::from),
            1,
            u64::from(self.pool_instances),
            "instances",
        )?;
        check(
            "max_request_bytes",
            settings.max_request_bytes,
            0,
            1 << 40,
            "bytes",
        )?;
        check(
            "max_response_bytes",
            settings.max_response_bytes,
            0,
            1 << 40,
            "bytes",
        )?;
        if let Some(name) = settings
            .env
            .keys()
            .chain(settings.secrets.keys())
            .find(|name| !valid_env_name(name))
        {
            return Err(InvalidSetting {
                setting: "env",
                reason: format!(
                    "{name:?} is not a valid variable name (letters, digits, `_`; not starting with a digit)"
                ),
            });
        }
        if let Some(host) = settings
            .allow_outbound
            .iter()
            .find(|h| !valid_host_pattern(h))
        {
            return Err(InvalidSetting {
                setting: "allow_outbound",
                reason: format!("{host:?} is not a host name or `*.domain` pattern"),
            });
        }
        if let Some(bucket) = settings
            .kv_buckets
            .iter()
            .find(|b| !sluice_store::is_dns_label(b))
        {
            return Err(InvalidSetting {
                setting: "kv_buckets",
                reason: format!(
                    "{bucket:?} is not a bucket name: use 1 to 63 lowercase letters, digits and `-`, starting and ending with a letter or digit"
                ),
            });
        }
        Ok(())
    }

    /// The limits function `settings` run with.
    pub fn resolve(&self, settings: &FunctionSettings) -> FunctionLimits {
        FunctionLimits {
            timeout: Duration::from_millis(settings.timeout_ms.unwrap_or(self.timeout_ms)),
            memory_bytes: settings.memory_mb.unwrap_or(self.memory_mb) * MIB,
            max_concurrency: settings.max_concurrency.unwrap_or(self.max_concurrency),
            max_request_bytes: settings.max_request_bytes.unwrap_or(self.max_request_bytes),
            max_response_bytes: settings
                .max_response_bytes
                .unwrap_or(self.max_response_bytes),
        }
    }
}

/// A host pattern for `allow_outbound`: a host name, optionally with a port,
/// or `*.` followed by a domain.
fn valid_host_pattern(pattern: &str) -> bool {
    let host = pattern.strip_prefix("*.").unwrap_or(pattern);
    let (host, port) = match host.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (host, None),
    };
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok());
    port_ok
        && !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// The resolved limits of one function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FunctionLimits {
    /// Wall-clock limit of one invocation.
    pub timeout: Duration,
    /// Linear-memory cap of one instance.
    pub memory_bytes: u64,
    /// Instances that may run at once.
    pub max_concurrency: u32,
    /// Largest request body accepted.
    pub max_request_bytes: u64,
    /// Largest response body produced.
    pub max_response_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lowest_control_group_memory_limit_is_found_in_v1_and_v2() {
        let files = |entries: &'static [(&'static str, &'static str)]| {
            move |path: &str| {
                entries
                    .iter()
                    .find(|(p, _)| *p == path)
                    .map(|(_, text)| text.to_string())
            }
        };
        // cgroup v2, the group's own file.
        assert_eq!(
            cgroup_limit(
                "0::/user.slice/app\n",
                files(&[("/sys/fs/cgroup/user.slice/app/memory.max", "2147483648\n")])
            ),
            Some(2 << 30)
        );
        // v2 inside a container: only the root is mounted; "max" is none.
        assert_eq!(
            cgroup_limit(
                "0::/\n",
                files(&[("/sys/fs/cgroup/memory.max", "1073741824\n")])
            ),
            Some(1 << 30)
        );
        assert_eq!(
            cgroup_limit("0::/\n", files(&[("/sys/fs/cgroup/memory.max", "max\n")])),
            None
        );
        // v1, as on this machine: unlimited is a page short of 2^63.
        let v1 = "4:memory:/process_api/abc\n3:cpuset:/\n0::/\n";
        assert_eq!(
            cgroup_limit(
                v1,
                files(&[(
                    "/sys/fs/cgroup/memory/process_api/abc/memory.limit_in_bytes",
                    "9223372036854771712\n"
                )])
            ),
            None
        );
        assert_eq!(
            cgroup_limit(
                v1,
                files(&[
                    ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "536870912"),
                    ("/sys/fs/cgroup/memory.max", "1073741824")
                ])
            ),
            Some(512 << 20)
        );
        assert_eq!(cgroup_limit("", files(&[])), None);
    }

    #[test]
    fn memory_budgets_parse_as_sizes_or_shares() {
        assert_eq!("50%".parse(), Ok(MemoryBudget::Percent(50)));
        assert_eq!("12G".parse(), Ok(MemoryBudget::Bytes(12 << 30)));
        assert_eq!("800MiB".parse(), Ok(MemoryBudget::Bytes(800 << 20)));
        assert_eq!(MemoryBudget::Percent(50).mebibytes(24 << 30), 12 << 10);
        assert_eq!(MemoryBudget::Bytes(256 << 20).mebibytes(0), 256);
        for bad in ["0%", "101%", "12Q", "-1G", "10K", ""] {
            assert!(bad.parse::<MemoryBudget>().is_err(), "{bad}");
        }
    }

    #[test]
    fn defaults_parse_and_resolve() {
        let limits = Limits::default();
        assert_eq!(limits.timeout_ms, 30_000);
        let resolved = limits.resolve(&FunctionSettings::default());
        assert_eq!(resolved.memory_bytes, 128 * MIB);
        let custom = FunctionSettings {
            timeout_ms: Some(5),
            memory_mb: Some(2),
            ..FunctionSettings::default()
        };
        let resolved = limits.resolve(&custom);
        assert_eq!(resolved.timeout, Duration::from_millis(5));
        assert_eq!(resolved.memory_bytes, 2 * MIB);
    }

    #[test]
    fn settings_within_limits_are_accepted_and_outside_are_refused() {
        let limits = Limits::default();
        let ok = FunctionSettings {
            memory_mb: Some(limits.max_memory_mb),
            allow_outbound: vec![
                "api.example.com".into(),
                "*.example.com".into(),
                "127.0.0.1:8080".into(),
            ],
            ..FunctionSettings::default()
        };
        limits.validate(&ok).unwrap();
        let too_much = FunctionSettings {
            memory_mb: Some(limits.max_memory_mb + 1),
            ..FunctionSettings::default()
        };
        assert_eq!(limits.validate(&too_much).unwrap_err().setting, "memory_mb");
        let zero = FunctionSettings {
            timeout_ms: Some(0),
            ..FunctionSettings::default()
        };
        assert_eq!(limits.validate(&zero).unwrap_err().setting, "timeout_ms");
        let bad_env = FunctionSettings {
            env: [("1X".to_string(), "v".to_string())].into(),
            ..FunctionSettings::default()
        };
        assert_eq!(limits.validate(&bad_env).unwrap_err().setting, "env");
        let bad_host = FunctionSettings {
            allow_outbound: vec!["http://x".into()],
            ..FunctionSettings::default()
        };
        assert_eq!(
            limits.validate(&bad_host).unwrap_err().setting,
            "allow_outbound"
        );
    }
}
