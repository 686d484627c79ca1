//! Picking where tensors live: a wgpu adapter (Vulkan, Metal, DX12, GL, WebGPU) or the CPU.
//!
//! `auto` takes the best wgpu adapter (discrete > integrated > virtual > other, and
//! Vulkan/Metal/DX12 over GL), and falls back to burn's CPU backend with a one-line notice when
//! there is none, it cannot start, or it is only a software rasterizer (which is slower than the
//! CPU backend; `--backend wgpu` uses it anyway). wgpu's own variables keep their meaning: `WGPU_BACKEND`
//! limits the graphics APIs considered, `WGPU_ADAPTER_NAME` picks an adapter by name (substring,
//! case-insensitive).

use std::fmt;
#[cfg(all(feature = "gpu", not(target_arch = "wasm32")))]
use std::{collections::HashMap, sync::Mutex};

#[cfg(feature = "gpu")]
use burn::backend::wgpu::wgpu;
use burn::tensor::Device;
#[cfg(all(feature = "gpu", not(target_arch = "wasm32")))]
use burn::tensor::{DeviceKind, wgpu::WgpuBackend};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// A wgpu adapter when one exists, else the CPU.
    Auto,
    /// A wgpu adapter, or an error.
    Wgpu,
    /// burn's pure-Rust CPU backend (flex).
    Cpu,
}

/// What wgpu reports about an adapter.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Adapter {
    pub name: String,
    /// Vulkan, Metal, DX12, GL or WebGPU.
    pub api: String,
    /// DiscreteGpu, IntegratedGpu, VirtualGpu, Cpu (a software rasterizer) or Other.
    pub device_type: String,
    pub driver: String,
    #[cfg(feature = "gpu")]
    #[serde(skip)]
    backend: wgpu::Backend,
    #[cfg(feature = "gpu")]
    #[serde(skip)]
    wgpu_type: wgpu::DeviceType,
}

impl Adapter {
    /// A software rasterizer (llvmpipe, SwiftShader, WARP): compute shaders on the CPU.
    fn is_software(&self) -> bool {
        #[cfg(feature = "gpu")]
        return self.wgpu_type == wgpu::DeviceType::Cpu;
        #[cfg(not(feature = "gpu"))]
        false
    }
}

impl fmt::Display for Adapter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}, {}", self.name, self.api, self.device_type)?;
        if !self.driver.is_empty() {
            write!(f, ", driver {}", self.driver)?;
        }
        write!(f, ")")
    }
}

/// The device a run uses and how to describe it.
#[derive(Clone, Debug)]
pub struct Selected {
    pub device: Device,
    /// `None` for the CPU backend.
    pub adapter: Option<Adapter>,
}

impl Selected {
    pub fn cpu() -> Self {
        Self {
            device: Device::flex(),
            adapter: None,
        }
    }

    pub fn is_wgpu(&self) -> bool {
        self.adapter.is_some()
    }

    /// One line: `wgpu: llvmpipe (Vulkan, Cpu)` or `cpu: burn flex backend`.
    pub fn describe(&self) -> String {
        match &self.adapter {
            Some(adapter) => format!("wgpu: {adapter}"),
            None => "cpu: burn flex backend".into(),
        }
    }

    /// Short backend name for tables and reports.
    pub fn backend_name(&self) -> String {
        match &self.adapter {
            Some(adapter) => format!("wgpu/{}", adapter.api),
            None => "cpu".into(),
        }
    }
}

#[cfg(feature = "gpu")]
fn api_name(backend: wgpu::Backend) -> &'static str {
    match backend {
        wgpu::Backend::Vulkan => "Vulkan",
        wgpu::Backend::Metal => "Metal",
        wgpu::Backend::Dx12 => "DX12",
        wgpu::Backend::Gl => "GL",
        wgpu::Backend::BrowserWebGpu => "WebGPU",
        _ => "none",
    }
}

/// Every adapter wgpu sees (limited by `WGPU_BACKEND` when set), in wgpu's order.
pub fn list_adapters() -> Vec<Adapter> {
    #[cfg(feature = "gpu")]
    return list_adapters_on(wgpu::Backends::from_env().unwrap_or(wgpu::Backends::all()));
    #[cfg(not(feature = "gpu"))]
    Vec::new()
}

/// The adapters a run may use: the primary APIs (Vulkan, Metal, DX12, WebGPU), and GL only when
/// there is none of those or `WGPU_BACKEND` asks for it. (Probing GL through EGL is slow and, on
/// headless Linux, prints warnings of its own.)
#[cfg(feature = "gpu")]
pub fn usable_adapters() -> Vec<Adapter> {
    if let Some(backends) = wgpu::Backends::from_env() {
        return list_adapters_on(backends);
    }
    let primary = list_adapters_on(wgpu::Backends::PRIMARY);
    if primary.is_empty() {
        list_adapters_on(wgpu::Backends::SECONDARY)
    } else {
        primary
    }
}

/// A build without wgpu (the browser's threaded one) sees no adapter.
#[cfg(not(feature = "gpu"))]
pub fn usable_adapters() -> Vec<Adapter> {
    Vec::new()
}

#[cfg(feature = "gpu")]
fn adapter_of(info: wgpu::AdapterInfo) -> Adapter {
    Adapter {
        api: api_name(info.backend).to_string(),
        device_type: format!("{:?}", info.device_type),
        driver: [info.driver.as_str(), info.driver_info.as_str()]
            .iter()
            .filter(|s| !s.is_empty())
            .copied()
            .collect::<Vec<_>>()
            .join(" "),
        name: info.name,
        backend: info.backend,
        wgpu_type: info.device_type,
    }
}

#[cfg(all(feature = "gpu", not(target_arch = "wasm32")))]
fn list_adapters_on(backends: wgpu::Backends) -> Vec<Adapter> {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends,
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    pollster::block_on(instance.enumerate_adapters(backends))
        .into_iter()
        .map(|adapter| adapter.get_info())
        .filter(|info| info.backend != wgpu::Backend::Noop)
        .map(adapter_of)
        .collect()
}

/// In the browser adapters cannot be listed synchronously; [`init_webgpu`] asks for one.
#[cfg(all(feature = "gpu", target_arch = "wasm32"))]
fn list_adapters_on(_backends: wgpu::Backends) -> Vec<Adapter> {
    Vec::new()
}

/// The browser's WebGPU device, or why there is none — in one sentence a visitor can read (the
/// wgpu error, with its debug dump of the device request, goes to the console instead). Must be
/// awaited before any tensor is made there: in the browser wgpu starts only asynchronously.
#[cfg(all(feature = "gpu", target_arch = "wasm32"))]
pub async fn init_webgpu() -> std::result::Result<Selected, String> {
    match Device::wgpu_options().init_with_setup_async().await {
        Ok((device, setup)) => Ok(Selected {
            device,
            adapter: Some(adapter_of(setup.adapter.get_info())),
        }),
        Err(e) => {
            web_sys::console::warn_1(&format!("WebGPU did not start: {e}").into());
            Err(
                "this browser offers no WebGPU adapter (it has no WebGPU, or it is turned off)"
                    .into(),
            )
        }
    }
}

/// The browser's threaded build has no wgpu (see Cargo.toml's `gpu`): the CPU backend only.
#[cfg(all(not(feature = "gpu"), target_arch = "wasm32"))]
pub async fn init_webgpu() -> std::result::Result<Selected, String> {
    Err("this is the page's threaded CPU build, which has no WebGPU".into())
}

#[cfg(feature = "gpu")]
fn rank(adapter: &Adapter) -> (u8, u8) {
    let type_rank = match adapter.wgpu_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    };
    let api_rank = u8::from(adapter.backend == wgpu::Backend::Gl);
    (type_rank, api_rank)
}

/// The adapter `auto`/`wgpu` would take, honouring `WGPU_ADAPTER_NAME`.
pub fn preferred_adapter(adapters: &[Adapter]) -> Result<Option<Adapter>> {
    let wanted = std::env::var("WGPU_ADAPTER_NAME")
        .ok()
        .map(|s| s.to_lowercase());
    let candidates: Vec<&Adapter> = adapters
        .iter()
        .filter(|a| {
            wanted
                .as_ref()
                .is_none_or(|w| a.name.to_lowercase().contains(w))
        })
        .collect();
    if let (Some(wanted), true) = (&wanted, candidates.is_empty()) {
        return Err(Error::input(format!(
            "WGPU_ADAPTER_NAME={wanted:?} matches no adapter (see `fairtune devices`)"
        )));
    }
    #[cfg(feature = "gpu")]
    return Ok(candidates.into_iter().min_by_key(|a| rank(a)).cloned());
    #[cfg(not(feature = "gpu"))]
    Ok(candidates.first().copied().cloned())
}

/// How burn/cubecl names an adapter: graphics API + device type + index among that type.
#[cfg(all(feature = "gpu", not(target_arch = "wasm32")))]
fn burn_selector(adapter: &Adapter, adapters: &[Adapter]) -> (WgpuBackend, DeviceKind) {
    let api = match adapter.backend {
        wgpu::Backend::Vulkan => WgpuBackend::Vulkan,
        wgpu::Backend::Metal => WgpuBackend::Metal,
        wgpu::Backend::Dx12 => WgpuBackend::Dx12,
        wgpu::Backend::Gl => WgpuBackend::Gl,
        wgpu::Backend::BrowserWebGpu => WgpuBackend::WebGpu,
        _ => WgpuBackend::Auto,
    };
    let index = adapters
        .iter()
        .take_while(|a| *a != adapter)
        .filter(|a| a.backend == adapter.backend && a.wgpu_type == adapter.wgpu_type)
        .count();
    let kind = match adapter.wgpu_type {
        wgpu::DeviceType::DiscreteGpu => DeviceKind::DiscreteGpu(index),
        wgpu::DeviceType::IntegratedGpu => DeviceKind::IntegratedGpu(index),
        wgpu::DeviceType::VirtualGpu => DeviceKind::VirtualGpu(index),
        wgpu::DeviceType::Cpu => DeviceKind::Cpu,
        wgpu::DeviceType::Other => DeviceKind::DefaultDevice,
    };
    (api, kind)
}

/// A wgpu runtime can be initialized once per process; later selections reuse it.
#[cfg(all(feature = "gpu", not(target_arch = "wasm32")))]
static INITIALIZED: Mutex<Option<HashMap<String, Device>>> = Mutex::new(None);

/// In the browser wgpu starts only asynchronously: [`init_webgpu`].
#[cfg(any(not(feature = "gpu"), target_arch = "wasm32"))]
fn init_wgpu(adapter: &Adapter, _adapters: &[Adapter]) -> Result<Device> {
    Err(Error::runtime(format!(
        "cannot start wgpu on {adapter} synchronously in the browser; use init_webgpu"
    )))
}

#[cfg(all(feature = "gpu", not(target_arch = "wasm32")))]
fn init_wgpu(adapter: &Adapter, adapters: &[Adapter]) -> Result<Device> {
    let (api, kind) = burn_selector(adapter, adapters);
    let key = format!("{api:?}/{kind:?}");
    let mut cache = INITIALIZED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(device) = cache.as_ref().and_then(|c| c.get(&key)) {
        return Ok(device.clone());
    }
    let (device, setup) = Device::wgpu_options()
        .graphics_api(api)
        .device_kind(kind)
        .init_with_setup()
        .map_err(|e| Error::runtime(format!("cannot start wgpu on {adapter}: {e}")))?;
    let started = setup.adapter.get_info().name;
    if started != adapter.name {
        return Err(Error::runtime(format!(
            "asked wgpu for {adapter} but it started {started:?}"
        )));
    }
    cache
        .get_or_insert_with(HashMap::new)
        .insert(key, device.clone());
    Ok(device)
}

/// The adapter `--backend auto` takes, or why it takes the CPU backend instead.
pub fn auto_adapter(adapters: &[Adapter]) -> Result<std::result::Result<Adapter, String>> {
    Ok(match preferred_adapter(adapters)? {
        None => Err("wgpu sees no adapter".to_string()),
        // A software rasterizer (llvmpipe, SwiftShader, WARP) runs compute shaders on the CPU far
        // slower than burn's own CPU backend (~37x on 2 cores here), so `auto` takes it only when
        // it is asked for by name; `--backend wgpu` uses it regardless.
        Some(adapter)
            if adapter.is_software() && std::env::var_os("WGPU_ADAPTER_NAME").is_none() =>
        {
            Err(format!(
                "the only wgpu adapter is a software rasterizer ({}), slower than the CPU backend \
                 (--backend wgpu uses it anyway)",
                adapter.name
            ))
        }
        Some(adapter) => Ok(adapter),
    })
}

/// Resolve `--backend` to a device. `auto` prints a one-line notice on stderr when it falls back.
pub fn select(choice: BackendChoice) -> Result<Selected> {
    match choice {
        BackendChoice::Cpu => Ok(Selected::cpu()),
        BackendChoice::Wgpu => {
            if !cfg!(feature = "gpu") {
                return Err(Error::input(
                    "--backend wgpu: this fairtune was built without wgpu (the `gpu` feature)",
                ));
            }
            let adapters = usable_adapters();
            let adapter = preferred_adapter(&adapters)?.ok_or_else(|| {
                Error::runtime(
                    "--backend wgpu: wgpu sees no adapter (install a GPU driver, or Mesa's \
                     software Vulkan: `apt-get install mesa-vulkan-drivers libvulkan1`)",
                )
            })?;
            let device = init_wgpu(&adapter, &adapters)?;
            Ok(Selected {
                device,
                adapter: Some(adapter),
            })
        }
        BackendChoice::Auto => {
            let adapters = usable_adapters();
            let outcome = match auto_adapter(&adapters)? {
                Err(reason) => Err(reason),
                Ok(adapter) => init_wgpu(&adapter, &adapters)
                    .map(|device| Selected {
                        device,
                        adapter: Some(adapter),
                    })
                    .map_err(|e| e.to_string()),
            };
            Ok(outcome.unwrap_or_else(|reason| {
                eprintln!("notice: {reason}; using the CPU backend");
                Selected::cpu()
            }))
        }
    }
}
