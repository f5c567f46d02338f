"""SAR oil spills: SAR-JointNet (joint SAR image + label diffusion), SAROSS-Net (UNet++ with
CAFT skip blocks), DAKD training data, and scene-level oil-spill detection."""
