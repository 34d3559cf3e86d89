from services.coach.service import CoachService

if __name__ == "__main__":
    CoachService.cli()
