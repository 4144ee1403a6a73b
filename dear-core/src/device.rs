//! Picks the device the model runs on: the CPU, or a CUDA GPU in builds with the
//! `cuda` feature. Asking for CUDA in a build without it is an error, never a panic.

use crate::Error;

/// Where the model's weights live and its arithmetic runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Device {
    /// The host CPU (all cores).
    #[default]
    Cpu,
    /// A CUDA GPU, by ordinal. Needs the `cuda` feature.
    Cuda(usize),
}

impl Device {
    /// The first CUDA GPU when this build has CUDA support and one is present, else the CPU.
    pub fn best_available() -> Self {
        if cfg!(feature = "cuda") && candle_core::utils::cuda_is_available() {
            Device::Cuda(0)
        } else {
            Device::Cpu
        }
    }

    /// Opens the device.
    ///
    /// # Errors
    /// [`Error::CudaNotCompiled`] for [`Device::Cuda`] in a build without the `cuda`
    /// feature; [`Error::Candle`] when the GPU cannot be opened.
    pub(crate) fn open(self) -> crate::Result<candle_core::Device> {
        match self {
            Device::Cpu => Ok(candle_core::Device::Cpu),
            Device::Cuda(ordinal) => open_cuda(ordinal),
        }
    }
}

impl std::str::FromStr for Device {
    type Err = Error;

    /// Parses `cpu`, `cuda` or `cuda:N`.
    fn from_str(s: &str) -> crate::Result<Self> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" | "gpu" => Ok(Device::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Device::Cuda)
                .ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "unknown device {s:?} (use cpu, cuda or cuda:N)"
                    ))
                }),
        }
    }
}

#[cfg(feature = "cuda")]
fn open_cuda(ordinal: usize) -> crate::Result<candle_core::Device> {
    Ok(candle_core::Device::new_cuda(ordinal)?)
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(_ordinal: usize) -> crate::Result<candle_core::Device> {
    Err(Error::CudaNotCompiled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_opens() -> crate::Result<()> {
        assert_eq!("cpu".parse::<Device>()?, Device::Cpu);
        assert_eq!("cuda:1".parse::<Device>()?, Device::Cuda(1));
        assert!("tpu".parse::<Device>().is_err());
        assert!(Device::Cpu.open()?.is_cpu());
        Ok(())
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_feature_is_an_error() {
        assert!(matches!(
            Device::Cuda(0).open(),
            Err(Error::CudaNotCompiled)
        ));
        assert_eq!(Device::best_available(), Device::Cpu);
    }
}
