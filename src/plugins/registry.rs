//! The plugins compiled into this binary. Adding one: a crate under `plugins/`, a path
//! dependency in the root `Cargo.toml`, and one line here (see `plugins/README.md`).

use tollgate_plugin::{register, Registration};

/// Every compiled-in plugin, by the name the YAML uses.
///
/// A static list rather than link-time collection (`inventory`, `linkme`): it is the one place
/// that says what this binary can run, it needs no unsafe or linker tricks, and the order is
/// the order `tollgate check` lists them in.
pub static PLUGINS: &[Registration] = &[
    register::<tollgate_plugin_llm_usage::LlmUsage>(),
    register::<tollgate_plugin_stripe_meter::StripeMeter>(),
    register::<tollgate_plugin_debug::DenyHeader>(),
    register::<tollgate_plugin_debug::DebugFail>(),
];

/// The registration named `name`.
pub fn find(name: &str) -> Option<&'static Registration> {
    PLUGINS.iter().find(|r| r.name == name)
}

/// The names of every compiled-in plugin, for error messages.
pub fn names() -> String {
    PLUGINS
        .iter()
        .map(|r| r.name)
        .collect::<Vec<_>>()
        .join(", ")
}
