from services.recorder.service import Recorder

Recorder.cli()
