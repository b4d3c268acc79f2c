# switchboard on AWS: one EC2 instance running `switchboard serve` behind an Elastic IP, its
# state on an EBS volume that outlives the instance, and optionally AWS IoT Core as the MQTT
# broker for on-demand devices. The resources are split by concern:
#
#   network.tf  subnet, security group, Elastic IP
#   server.tf   AMI, instance, user data, IAM, state volume
#   iot.tf      IoT things, certificates and policies (iot_enabled)
#   outputs.tf  addresses, MQTT endpoint, device certificates and agent.yaml

data "aws_partition" "current" {}

data "aws_region" "current" {}

data "aws_caller_identity" "current" {}

locals {
  # Fixed by switchboard itself.
  state_dir            = "/var/lib/switchboard" # serve --state-dir; the state volume's mount point
  iot_dir              = "/etc/switchboard/iot" # the server's IoT certificate, key and CA
  iot_server_client_id = "switchboard-server"   # the server always connects with this client id
  mqtt_port            = 8883                   # embedded broker and AWS IoT (mutual TLS)
  device_dir           = "/etc/switchboard"     # where enroll's output goes on a device
  default_forward      = "22:127.0.0.1:22"      # a device's forward when enroll gets none

  # The IoT policy variable, kept literal ($$ escapes Terraform's own interpolation).
  thing_name = "$${iot:Connection.Thing.ThingName}"

  # What devices and operators dial. The Elastic IP's address unless a DNS name is given.
  eip_allocation_id = var.existing_eip_allocation_id != null ? var.existing_eip_allocation_id : aws_eip.server[0].allocation_id
  eip_public_ip     = var.existing_eip_allocation_id != null ? data.aws_eip.existing[0].public_ip : aws_eip.server[0].public_ip
  eip_public_dns    = var.existing_eip_allocation_id != null ? data.aws_eip.existing[0].public_dns : aws_eip.server[0].public_dns
  public_host       = var.public_hostname != null ? var.public_hostname : local.eip_public_ip
  public_addr       = "${local.public_host}:${var.ssh_port}"
  known_hosts_host  = var.ssh_port == 22 ? local.public_host : "[${local.public_host}]:${var.ssh_port}"

  # The broker on-demand devices dial: AWS IoT's ATS endpoint, the embedded broker, or none.
  iot_endpoint = var.iot_enabled ? data.aws_iot_endpoint.ats[0].endpoint_address : null
  mqtt_url = (var.iot_enabled ? "mqtts://${local.iot_endpoint}:${local.mqtt_port}" :
  var.embedded_broker ? "mqtts://${local.public_host}:${local.mqtt_port}" : null)

  # arn:PARTITION:iot:REGION:ACCOUNT, the prefix of every IoT policy resource.
  iot_arn = "arn:${data.aws_partition.current.partition}:iot:${data.aws_region.current.name}:${data.aws_caller_identity.current.account_id}"

  # The binary's S3 object, if it comes from S3: [bucket, key].
  s3_location   = var.switchboard_s3_uri == null ? [] : regex("^s3://([^/]+)/(.+)$", var.switchboard_s3_uri)
  s3_object_arn = var.switchboard_s3_uri == null ? null : "arn:${data.aws_partition.current.partition}:s3:::${local.s3_location[0]}/${local.s3_location[1]}"

  # The server's command line (systemd ExecStart). Every part is validated to hold no space,
  # quote or %, so joining with spaces is exact.
  serve_args = concat(
    [
      "/usr/local/bin/switchboard", "serve",
      "--listen", ":${var.ssh_port}",
      "--state-dir", local.state_dir,
      "--public-addr", local.public_addr,
    ],
    var.iot_enabled ? [
      "--mqtt", local.mqtt_url,
      "--mqtt-ca", "${local.iot_dir}/AmazonRootCA1.pem",
      "--mqtt-cert", "${local.iot_dir}/server.crt",
      "--mqtt-key", "${local.iot_dir}/server.key",
      ] : var.embedded_broker ? [
      "--mqtt", "embedded",
      "--mqtt-listen", ":${local.mqtt_port}",
    ] : ["--mqtt", "off"],
    var.mqtt_prefix == "switchboard" ? [] : ["--mqtt-prefix", var.mqtt_prefix],
    var.server_extra_args,
  )
  exec_start = join(" ", local.serve_args)
}
