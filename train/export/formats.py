"""The names of an export's files, the formats, and the SavedModel's signature: the one
place that says them (write, load and evaluation import them from here)."""

KERAS_FILE = "model.keras"
WEIGHTS_FILE = "model.weights.h5"
SAVED_MODEL_DIR = "saved_model"
META_FILE = "export.json"
FORMATS = ("keras", "weights", "saved_model")
ARTIFACTS = {"keras": KERAS_FILE, "weights": WEIGHTS_FILE, "saved_model": SAVED_MODEL_DIR}
SERVING_SIGNATURE = "serving_default"
