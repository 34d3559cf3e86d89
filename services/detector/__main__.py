from services.detector.service import DetectorService

DetectorService.cli()
