# `terraform test` (Terraform >= 1.7) with a mocked AWS provider: no credentials, no network.
# It plans and applies against mocks, so it checks the module's logic (counts, conditions,
# preconditions, the rendered user data, the policies, the outputs), not AWS's answers.

mock_provider "aws" {
  mock_data "aws_region" {
    defaults = { name = "eu-west-1" }
  }
  mock_data "aws_partition" {
    defaults = { partition = "aws", dns_suffix = "amazonaws.com" }
  }
  mock_data "aws_caller_identity" {
    defaults = { account_id = "123456789012" }
  }
  mock_data "aws_availability_zones" {
    defaults = { names = ["eu-west-1a", "eu-west-1b", "eu-west-1c"] }
  }
  mock_data "aws_subnet" {
    defaults = { id = "subnet-0123456789abcdef0", availability_zone = "eu-west-1a", vpc_id = "vpc-0123456789abcdef0" }
  }
  mock_data "aws_ami" {
    defaults = { id = "ami-0123456789abcdef0" }
  }
  mock_data "aws_ec2_instance_type" {
    defaults = { supported_architectures = ["arm64"] }
  }
  mock_data "aws_iot_endpoint" {
    defaults = { endpoint_address = "a1b2c3d4e5f6g7-ats.iot.eu-west-1.amazonaws.com" }
  }
  mock_data "aws_ebs_volume" {
    defaults = { availability_zone = "eu-west-1b" }
  }
  mock_data "aws_eip" {
    defaults = { public_ip = "198.51.100.20", public_dns = "ec2-198-51-100-20.eu-west-1.compute.amazonaws.com" }
  }
  mock_resource "aws_eip" {
    defaults = { allocation_id = "eipalloc-0123456789abcdef0", public_ip = "203.0.113.10", public_dns = "ec2-203-0-113-10.eu-west-1.compute.amazonaws.com" }
  }
  mock_resource "aws_ebs_volume" {
    defaults = { id = "vol-0123456789abcdef0" }
  }
  mock_resource "aws_instance" {
    defaults = { id = "i-0123456789abcdef0" }
  }
  mock_resource "aws_iot_certificate" {
    defaults = {
      arn             = "arn:aws:iot:eu-west-1:123456789012:cert/0123456789abcdef"
      certificate_pem = "-----BEGIN CERTIFICATE-----\nMOCK\n-----END CERTIFICATE-----\n"
      private_key     = "-----BEGIN RSA PRIVATE KEY-----\nMOCK\n-----END RSA PRIVATE KEY-----\n"
    }
  }
  mock_resource "aws_ssm_parameter" {
    defaults = { arn = "arn:aws:ssm:eu-west-1:123456789012:parameter/switchboard/iot/mock" }
  }
}

variables {
  region             = "eu-west-1"
  switchboard_url    = "https://example.com/switchboard-v1.0.0-linux-arm64"
  switchboard_sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
  # The applies below must be destroyable when the test ends; "defaults" plans the default (true).
  state_volume_prevent_destroy = false
}

run "defaults" {
  command = plan

  variables {
    state_volume_prevent_destroy = true
  }

  assert {
    condition     = length(aws_ebs_volume.state_protected) == 1 && length(aws_ebs_volume.state) == 0 && aws_ebs_volume.state_protected[0].encrypted && aws_ebs_volume.state_protected[0].availability_zone == "eu-west-1a"
    error_message = "By default the state volume is created in the subnet's zone, encrypted, under prevent_destroy."
  }
  assert {
    condition     = length(aws_vpc_security_group_ingress_rule.switchboard_ssh) == 1 && length(aws_vpc_security_group_ingress_rule.mqtt) == 0 && length(aws_vpc_security_group_ingress_rule.admin_ssh) == 0
    error_message = "Only the switchboard SSH port should be open by default."
  }
  assert {
    condition     = aws_vpc_security_group_ingress_rule.switchboard_ssh["0.0.0.0/0"].from_port == 2222 && aws_vpc_security_group_ingress_rule.switchboard_ssh["0.0.0.0/0"].cidr_ipv4 == "0.0.0.0/0"
    error_message = "The switchboard SSH rule should open 2222 to 0.0.0.0/0."
  }
  assert {
    condition     = aws_instance.server.instance_type == "t4g.small" && aws_instance.server.ami == "ami-0123456789abcdef0" && aws_instance.server.metadata_options[0].http_tokens == "required"
    error_message = "Defaults: t4g.small, the looked-up AMI, IMDSv2 required."
  }
}

run "defaults_applied" {
  command = apply

  assert {
    condition     = output.public_addr == "203.0.113.10:2222"
    error_message = "The public address should be the Elastic IP and port 2222."
  }
  assert {
    condition     = output.serve_command == "/usr/local/bin/switchboard serve --listen :2222 --state-dir /var/lib/switchboard --public-addr 203.0.113.10:2222 --mqtt off"
    error_message = "Unexpected serve command: ${output.serve_command}."
  }
  assert {
    condition     = aws_volume_attachment.state.volume_id == "vol-0123456789abcdef0" && aws_volume_attachment.state.device_name == "/dev/sdf"
    error_message = "The state volume should be attached as /dev/sdf."
  }
  assert {
    condition     = strcontains(aws_instance.server.user_data, "VOLUME_ID='vol-0123456789abcdef0'") && strcontains(aws_instance.server.user_data, "ExecStart=/usr/local/bin/switchboard serve --listen :2222")
    error_message = "The user data should carry the volume id and the command line."
  }
  assert {
    condition     = strcontains(aws_instance.server.user_data, "SystemCallFilter=@system-service") && !strcontains(aws_instance.server.user_data, "CAP_NET_BIND_SERVICE\nAmbientCapabilities")
    error_message = "The user data should embed deploy/systemd/switchboard-server.service, without the port-22 capability."
  }
  assert {
    condition     = length(aws_iam_role_policy.server) == 0 && length(aws_iam_role_policy_attachment.ssm) == 1
    error_message = "With a URL binary and no IoT the role should only have SSM."
  }
  assert {
    condition     = output.mqtt_url == null && output.iot_endpoint == null && length(output.device_agent_yaml) == 0
    error_message = "No MQTT without embedded_broker or iot_enabled."
  }
  assert {
    condition     = output.host_key_command == "aws ec2 get-console-output --region eu-west-1 --instance-id i-0123456789abcdef0 --latest --query Output --output text | tr -d '\\r' | sed -n 's/^.*switchboard host key: //p' | tail -n 1"
    error_message = "Unexpected host_key_command: ${output.host_key_command}."
  }
}

run "embedded_broker_admin_ssh_port_22_hostname" {
  command = plan

  variables {
    embedded_broker      = true
    admin_cidr           = "198.51.100.7/32"
    allowed_cidrs        = ["0.0.0.0/0", "2001:db8::/32"]
    public_hostname      = "pivot.example.com"
    ssh_port             = 2200
    admin_ssh_public_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMockMockMockMockMockMockMockMockMockMockMock admin"
    server_extra_args    = ["--domain", "example.com"]
  }

  assert {
    condition     = length(aws_vpc_security_group_ingress_rule.mqtt) == 2 && aws_vpc_security_group_ingress_rule.mqtt["2001:db8::/32"].cidr_ipv6 == "2001:db8::/32" && aws_vpc_security_group_ingress_rule.mqtt["0.0.0.0/0"].from_port == 8883
    error_message = "The embedded broker should open 8883 to every allowed CIDR, IPv6 included."
  }
  assert {
    condition     = aws_vpc_security_group_ingress_rule.admin_ssh[0].from_port == 22 && aws_vpc_security_group_ingress_rule.admin_ssh[0].cidr_ipv4 == "198.51.100.7/32"
    error_message = "Admin SSH should open 22 to admin_cidr only."
  }
  assert {
    condition     = output.serve_command == "/usr/local/bin/switchboard serve --listen :2200 --state-dir /var/lib/switchboard --public-addr pivot.example.com:2200 --mqtt embedded --mqtt-listen :8883 --domain example.com"
    error_message = "Unexpected serve command: ${output.serve_command}."
  }
  assert {
    condition     = output.mqtt_url == "mqtts://pivot.example.com:8883"
    error_message = "The embedded broker's URL should use the public host name."
  }
  assert {
    condition     = strcontains(aws_instance.server.user_data, "KNOWN_HOSTS_HOST='[pivot.example.com]:2200'")
    error_message = "known_hosts should name [host]:port."
  }
  assert {
    condition     = length(aws_key_pair.admin) == 1
    error_message = "An admin key pair should be created."
  }
}

run "privileged_port" {
  command = apply

  variables {
    ssh_port = 22
  }

  assert {
    condition     = strcontains(aws_instance.server.user_data, "CapabilityBoundingSet=CAP_NET_BIND_SERVICE\nAmbientCapabilities=CAP_NET_BIND_SERVICE\nSWITCHBOARD_DROPIN")
    error_message = "Port 22 needs CAP_NET_BIND_SERVICE in the drop-in."
  }
  assert {
    condition     = strcontains(aws_instance.server.user_data, "KNOWN_HOSTS_HOST='203.0.113.10'")
    error_message = "On port 22 known_hosts names the bare host."
  }
}

run "iot" {
  command = apply

  variables {
    iot_enabled  = true
    devices      = ["dev42", "cam-7"]
    device_csrs  = { "cam-7" = "-----BEGIN CERTIFICATE REQUEST-----\nMOCK\n-----END CERTIFICATE REQUEST-----\n" }
    ssm_enabled  = false
    architecture = "arm64"
  }

  assert {
    condition     = output.mqtt_url == "mqtts://a1b2c3d4e5f6g7-ats.iot.eu-west-1.amazonaws.com:8883" && output.iot_endpoint == "a1b2c3d4e5f6g7-ats.iot.eu-west-1.amazonaws.com"
    error_message = "The MQTT URL should be the ATS endpoint on 8883."
  }
  assert {
    condition     = output.serve_command == "/usr/local/bin/switchboard serve --listen :2222 --state-dir /var/lib/switchboard --public-addr 203.0.113.10:2222 --mqtt mqtts://a1b2c3d4e5f6g7-ats.iot.eu-west-1.amazonaws.com:8883 --mqtt-ca /etc/switchboard/iot/AmazonRootCA1.pem --mqtt-cert /etc/switchboard/iot/server.crt --mqtt-key /etc/switchboard/iot/server.key"
    error_message = "Unexpected serve command: ${output.serve_command}."
  }
  assert {
    condition     = aws_iot_thing.server[0].name == "switchboard-server" && toset(keys(aws_iot_thing.device)) == toset(["dev42", "cam-7"]) && aws_iot_thing.device["dev42"].name == "dev42"
    error_message = "Thing names should be switchboard-server and the device names."
  }
  assert {
    condition     = aws_iot_certificate.device["cam-7"].csr != null && aws_iot_certificate.device["dev42"].csr == null && aws_iot_certificate.device["dev42"].active
    error_message = "Only cam-7 should use its CSR; certificates should be active."
  }
  assert {
    condition     = aws_iot_thing_principal_attachment.device["dev42"].thing == "dev42" && aws_iot_policy_attachment.device["dev42"].policy == "switchboard-device"
    error_message = "Each device certificate should be attached to its thing and the device policy."
  }
  assert {
    condition = jsondecode(aws_iot_policy.device[0].policy) == {
      Version = "2012-10-17"
      Statement = [
        {
          Effect    = "Allow"
          Action    = "iot:Connect"
          Resource  = "arn:aws:iot:eu-west-1:123456789012:client/$${iot:Connection.Thing.ThingName}"
          Condition = { Bool = { "iot:Connection.Thing.IsAttached" = "true" } }
        },
        {
          Effect   = "Allow"
          Action   = "iot:Subscribe"
          Resource = "arn:aws:iot:eu-west-1:123456789012:topicfilter/switchboard/$${iot:Connection.Thing.ThingName}/wake"
        },
        {
          Effect   = "Allow"
          Action   = "iot:Receive"
          Resource = "arn:aws:iot:eu-west-1:123456789012:topic/switchboard/$${iot:Connection.Thing.ThingName}/wake"
        },
        {
          Effect   = "Allow"
          Action   = ["iot:Publish", "iot:RetainPublish"]
          Resource = "arn:aws:iot:eu-west-1:123456789012:topic/switchboard/$${iot:Connection.Thing.ThingName}/state"
        },
      ]
    }
    error_message = "The device policy differs from docs/aws-iot.md."
  }
  assert {
    condition     = strcontains(aws_iot_policy.server[0].policy, "arn:aws:iot:eu-west-1:123456789012:client/switchboard-server") && strcontains(aws_iot_policy.server[0].policy, "topicfilter/switchboard/*/state")
    error_message = "The server policy should name client/switchboard-server and topicfilter/switchboard/*/state."
  }
  assert {
    condition     = aws_ssm_parameter.iot_server_key[0].type == "SecureString" && aws_ssm_parameter.iot_server_key[0].name == "/switchboard/iot/server.key"
    error_message = "The server's IoT key should be an SSM SecureString."
  }
  assert {
    condition     = !strcontains(aws_instance.server.user_data, "PRIVATE KEY") && strcontains(aws_instance.server.user_data, "IOT_KEY_PARAMETER='/switchboard/iot/server.key'") && strcontains(aws_instance.server.user_data, "BEGIN CERTIFICATE")
    error_message = "The user data should carry the key's parameter name and Amazon's CA, never a private key."
  }
  assert {
    condition     = jsondecode(aws_iam_role_policy.server[0].policy).Statement == [{ Sid = "ReadIotServerCredentials", Effect = "Allow", Action = ["ssm:GetParameter"], Resource = ["arn:aws:ssm:eu-west-1:123456789012:parameter/switchboard/iot/mock", "arn:aws:ssm:eu-west-1:123456789012:parameter/switchboard/iot/mock"] }]
    error_message = "The instance role should only read the two IoT parameters."
  }
  assert {
    condition     = length(aws_iam_role_policy_attachment.ssm) == 0
    error_message = "ssm_enabled = false should attach no SSM policy."
  }
  assert {
    condition     = output.device_agent_yaml["dev42"] == "# switchboard agent configuration for dev42 (written by Terraform, deploy/terraform/aws)\nserver: \"203.0.113.10:2222\"\nname: \"dev42\"\nidentity: \"/etc/switchboard/id_ed25519\"\nknown_hosts: \"/etc/switchboard/known_hosts\"\nforwards:\n  - \"22:127.0.0.1:22\"\n# On demand: wait for wake-ups over MQTT instead of holding the SSH connection.\non_demand: true\nmqtt: \"mqtts://a1b2c3d4e5f6g7-ats.iot.eu-west-1.amazonaws.com:8883\"\nmqtt_ca: \"/etc/switchboard/mqtt-ca.pem\"\nmqtt_cert: \"/etc/switchboard/mqtt.crt\"\nmqtt_key: \"/etc/switchboard/mqtt.key\"\n"
    error_message = "Unexpected agent.yaml for dev42: ${output.device_agent_yaml["dev42"]}."
  }
  assert {
    condition     = strcontains(output.amazon_root_ca_pem, "BEGIN CERTIFICATE") && output.device_certificates["dev42"].thing == "dev42"
    error_message = "The CA and device certificates should be output."
  }
}

run "s3_binary_existing_volume_and_eip" {
  command = apply

  variables {
    switchboard_url            = null
    switchboard_sha256         = null
    switchboard_s3_uri         = "s3://my-artifacts/switchboard/v1.0.0/switchboard-linux-arm64"
    existing_state_volume_id   = "vol-0fedcba9876543210"
    existing_eip_allocation_id = "eipalloc-0fedcba9876543210"
    subnet_id                  = null
    mqtt_prefix                = "fleet/a"
  }

  override_data {
    target = data.aws_subnet.server
    values = { id = "subnet-0fedcba9876543210", availability_zone = "eu-west-1b", vpc_id = "vpc-0123456789abcdef0" }
  }

  assert {
    condition     = length(aws_ebs_volume.state) == 0 && length(aws_ebs_volume.state_protected) == 0 && aws_volume_attachment.state.volume_id == "vol-0fedcba9876543210"
    error_message = "An existing state volume should be attached, no new one created."
  }
  assert {
    condition     = length(aws_eip.server) == 0 && aws_eip_association.server.allocation_id == "eipalloc-0fedcba9876543210" && output.public_ip == "198.51.100.20"
    error_message = "An existing Elastic IP should be reused."
  }
  assert {
    condition     = jsondecode(aws_iam_role_policy.server[0].policy).Statement == [{ Sid = "ReadSwitchboardBinary", Effect = "Allow", Action = ["s3:GetObject"], Resource = ["arn:aws:s3:::my-artifacts/switchboard/v1.0.0/switchboard-linux-arm64"] }]
    error_message = "The instance role should read exactly the binary's S3 object."
  }
  assert {
    condition     = strcontains(aws_instance.server.user_data, "BIN_S3_URI='s3://my-artifacts/switchboard/v1.0.0/switchboard-linux-arm64'") && strcontains(aws_instance.server.user_data, "BIN_URL=''")
    error_message = "The user data should copy the binary from S3."
  }
  assert {
    condition     = endswith(output.serve_command, "--mqtt off --mqtt-prefix fleet/a")
    error_message = "A non-default prefix should be passed to the server."
  }
}

run "unprotected_volume" {
  command = plan

  variables {
    state_volume_prevent_destroy = false
  }

  assert {
    condition     = length(aws_ebs_volume.state) == 1 && length(aws_ebs_volume.state_protected) == 0 && aws_ebs_volume.state[0].final_snapshot
    error_message = "Without prevent_destroy the volume is the plain resource, with a final snapshot."
  }
}

run "rejects_url_and_s3" {
  command = plan

  variables {
    switchboard_s3_uri = "s3://my-artifacts/switchboard"
  }

  expect_failures = [aws_instance.server]
}

run "rejects_url_without_sha256" {
  command = plan

  variables {
    switchboard_sha256 = null
  }

  expect_failures = [aws_instance.server]
}

run "rejects_broker_and_iot" {
  command = plan

  variables {
    embedded_broker = true
    iot_enabled     = true
  }

  expect_failures = [aws_instance.server]
}

run "rejects_wrong_architecture" {
  command = plan

  variables {
    architecture  = "x86_64"
    instance_type = "t3.small"
  }

  expect_failures = [aws_instance.server]
}

run "rejects_volume_in_other_zone" {
  command = plan

  # The given subnet is in eu-west-1a (mock), the volume in eu-west-1b.
  variables {
    existing_state_volume_id = "vol-0fedcba9876543210"
    subnet_id                = "subnet-0123456789abcdef0"
  }

  expect_failures = [aws_instance.server]
}

run "rejects_device_names" {
  command = plan

  variables {
    iot_enabled = true
    devices     = ["dev.42", "Dev43", "switchboard-server"]
  }

  expect_failures = [var.devices]
}

run "rejects_bad_inputs" {
  command = plan

  variables {
    allowed_cidrs      = ["203.0.113.7/24"]
    ssh_port           = 70000
    instance_type      = "t4g small"
    switchboard_sha256 = "ABC"
    admin_cidr         = "10.0.0.0/33"
  }

  expect_failures = [var.allowed_cidrs, var.ssh_port, var.instance_type, var.switchboard_sha256, var.admin_cidr]
}
