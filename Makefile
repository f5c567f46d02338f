# rs-diffusion — every target sets itself up on first use.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
export QT_QPA_PLATFORM ?= offscreen
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: setup demo test bench gpu-check package qgis starter-models starter-segmentation starter-satsynth starter-idgbr starter-sar starter-fusion starter-rdfmig clean

## setup: QGIS + xvfb from apt when missing, .venv on the system Python, the project in editable mode
setup: $(STAMP)

$(STAMP): pyproject.toml
	@if ! /usr/bin/python3 -c 'import qgis.core' 2>/dev/null || [ ! -x /usr/bin/qgis_process.bin ] || ! command -v xvfb-run >/dev/null; then \
		echo "Installing QGIS and xvfb with apt..."; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends qgis python3-qgis qgis-providers xvfb; \
	fi
	@[ -x $(PY) ] || /usr/bin/python3 -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

## demo: segment a procedural scene with the shipped starter model (class raster + polygons)
demo: setup
	$(PY) -m core.demo --output demo_output

## test: the whole test suite, real QGIS included
test: setup
	$(PY) -m pytest -q tests

## bench: performance ratios -> benchmarks/results/latest.json
bench: setup
	$(PY) -m benchmarks.run

## gpu-check: on a CUDA machine, every trainer (AMP), sampler and pipeline on a small input, the OOM fallback and a
## timed SAROSS-Net forward -> benchmarks/results/gpu.json; without CUDA it says so and exits 0
gpu-check: setup
	$(PY) -m benchmarks.gpu_check

## package: dist/rs_diffusion_plugin.zip (code only, for the QGIS plugin repository or "Install from ZIP")
## and dist/rs_diffusion_models-<version>.zip (the starter models, installed from the dock)
package: setup
	$(PY) -m rs_diffusion_plugin.packaging dist

## qgis: QGIS desktop with the plugin in a throwaway profile, using this venv's packages
qgis: setup
	rm -rf .qgis_profile
	$(PY) -c 'from rs_diffusion_plugin.packaging import install_into_profile; install_into_profile(".qgis_profile")'
	env -u QT_QPA_PLATFORM RS_DIFFUSION_SITE_PACKAGES="$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
		qgis --profiles-path $(CURDIR)/.qgis_profile --noversioncheck

## starter-models: train every shipped starter model with our own CLI (2 CPU cores: ~6 h)
starter-models: starter-segmentation starter-satsynth starter-idgbr starter-sar starter-fusion starter-rdfmig

runs/data/scenes/classes.json: | setup
	$(PY) -m training scenes --output runs/data/scenes --count 240 --size 256 --seed 1

## starter-segmentation: the segmenter (~20 min)
starter-segmentation: setup runs/data/scenes/classes.json
	$(PY) -m training segment --config training/configs/segmentation_starter.toml
	$(call ship,runs/starter/segmentation,segmentation_starter)

## starter-satsynth: SatSynth base + x2 SR (~100 min)
starter-satsynth: setup runs/data/scenes/classes.json
	$(PY) -m training satsynth --config training/configs/satsynth_starter.toml
	$(call ship,runs/starter/satsynth,satsynth_starter)
	$(PY) -m training satsynth-sr --config training/configs/satsynth_sr_starter.toml
	$(call ship,runs/starter/satsynth_sr,satsynth_sr_starter)

## starter-idgbr: IDGBR label embedding, autoencoder and refiner. Stage 3a on the starter segmenter's maps of its
## own scenes (3000 steps), stage 3b on out-of-fold maps: 4 segmenters of 500 steps, each mapping the scenes it
## never saw, then 2 x 1500 steps at strength 0.3 (~15 + 20 + 60 + 25 min)
starter-idgbr: setup runs/data/scenes/classes.json
	rm -rf runs/data/scenes/coarse runs/data/idgbr_oof_coarse
	$(PY) -m training coarse-labels --data runs/data/scenes
	$(PY) -m training idgbr-embed --config training/configs/idgbr_embed_starter.toml
	$(PY) -m training idgbr-vae --config training/configs/idgbr_vae_starter.toml
	$(PY) -m training idgbr --config training/configs/idgbr_starter.toml
	$(PY) -m training coarse-labels --data runs/data/scenes --output runs/data/idgbr_oof_coarse --folds 4 \
		--fold-steps 500 --seed 2
	$(PY) -m training idgbr --config training/configs/idgbr_starter_oof1.toml
	$(PY) -m training idgbr --config training/configs/idgbr_starter_oof2.toml
	$(call ship,runs/starter/idgbr_oof2,idgbr_starter)

## starter-sar: procedural SAR scenes, SAR-JointNet (3 stages), 128 generated pairs, SAROSS-Net with DAKD and
## the same SAROSS-Net without generated data (the benchmark's control; not shipped) (~90 min)
starter-sar: setup
	rm -rf runs/data/sar_scenes runs/data/sar_generated
	$(PY) -m training sar-scenes --output runs/data/sar_scenes --count 200 --size 256 --seed 7
	$(PY) -m training sar-jointnet --config training/configs/sar_jointnet_stage1_starter.toml
	$(PY) -m training sar-jointnet --config training/configs/sar_jointnet_stage2_starter.toml
	$(PY) -m training sar-jointnet --config training/configs/sar_jointnet_stage3_starter.toml
	$(call ship,runs/starter/sar_jointnet,sar_jointnet_starter)
	$(PY) -m training sar-synthesize --model resources/models/sar_jointnet_starter --output runs/data/sar_generated \
		--count 128 --steps 50 --seed 1
	$(PY) -m training saross --config training/configs/saross_starter.toml
	$(call ship,runs/starter/saross,saross_starter)
	$(PY) -m training saross --config training/configs/saross_starter.toml --synthetic "" \
		--output runs/starter/saross_real_only

## starter-fusion: procedural infrared / visible pairs, the small fusion prior, and the demo's sample pair (~40 min)
starter-fusion: setup
	rm -rf runs/data/irvis resources/samples/irvis
	$(PY) -m training irvis-pairs --output runs/data/irvis --count 120 --size 256 --seed 5
	$(PY) -m training fusion-prior --config training/configs/fusion_prior_starter.toml
	$(call ship,runs/starter/fusion_prior,fusion_prior_starter)
	$(PY) -c 'from core.data.irvis import write_irvis_pair; \
		write_irvis_pair("resources/samples/irvis/ir.tif", "resources/samples/irvis/vi.tif", 256, 256, seed=2026)'

## starter-rdfmig: procedural change pairs, the FCF, the RDF-MIG joint model (MCRD) and the FC-Siam-conc change
## detector (~90 min)
starter-rdfmig: setup
	rm -rf runs/data/change_scenes
	$(PY) -m training change-scenes --output runs/data/change_scenes --count 120 --size 256 --seed 0
	$(PY) -m training fcf --config training/configs/fcf_starter.toml
	$(call ship,runs/starter/fcf,fcf_starter)
	$(PY) -m training changedet --config training/configs/changedet_starter.toml
	$(call ship,runs/starter/changedet,changedet_starter)
	$(PY) -m training rdfmig --config training/configs/rdfmig_starter.toml
	$(call ship,runs/starter/rdfmig,rdfmig_starter)

# ship RUN,NAME: copy a run's model (+ its training curves) into resources/models/NAME
define ship
	rm -rf resources/models/$(2)
	mkdir -p resources/models
	cp -r $(1)/model resources/models/$(2)
	cp $(1)/curves.png resources/models/$(2)/training_curves.png
endef

clean:
	rm -rf $(VENV) dist runs demo_output .qgis_profile
