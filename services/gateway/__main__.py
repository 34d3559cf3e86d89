from services.gateway.service import GatewayService

if __name__ == "__main__":
    GatewayService.cli()
