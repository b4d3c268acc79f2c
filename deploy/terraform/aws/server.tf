# The server: instance, user data, instance role, state volume.

locals {
  ami_lookup = {
    # Debian's official images (account 136693071363), e.g. debian-12-arm64-20250210-2019.
    debian12 = { owner = "136693071363", name = "debian-12-${var.architecture == "arm64" ? "arm64" : "amd64"}-*" }
    # Amazon Linux 2023 standard images, e.g. al2023-ami-2023.6.20250211.0-kernel-6.1-arm64.
    al2023 = { owner = "amazon", name = "al2023-ami-2023.*-kernel-*-${var.architecture}" }
  }
  ami_id = var.ami_id != null ? var.ami_id : data.aws_ami.os[0].id

  # The default user of the image, for admin SSH.
  admin_user = var.os == "debian12" ? "admin" : "ec2-user"

  state_volume_id = (var.existing_state_volume_id != null ? var.existing_state_volume_id :
  one(concat(aws_ebs_volume.state[*].id, aws_ebs_volume.state_protected[*].id)))

  # Everything the instance role may do besides SSM (ssm_enabled): read the binary's one S3
  # object, and the server's IoT certificate and key.
  server_role_statements = concat(
    var.switchboard_s3_uri == null ? [] : [{
      Sid      = "ReadSwitchboardBinary"
      Effect   = "Allow"
      Action   = ["s3:GetObject"]
      Resource = [local.s3_object_arn]
    }],
    var.iot_enabled ? [{
      Sid      = "ReadIotServerCredentials"
      Effect   = "Allow"
      Action   = ["ssm:GetParameter"]
      Resource = [aws_ssm_parameter.iot_server_cert[0].arn, aws_ssm_parameter.iot_server_key[0].arn]
    }] : [],
  )
}

data "aws_ami" "os" {
  count = var.ami_id == null ? 1 : 0

  most_recent = true
  owners      = [local.ami_lookup[var.os].owner]

  filter {
    name   = "name"
    values = [local.ami_lookup[var.os].name]
  }

  filter {
    name   = "architecture"
    values = [var.architecture]
  }

  filter {
    name   = "virtualization-type"
    values = ["hvm"]
  }

  filter {
    name   = "root-device-type"
    values = ["ebs"]
  }
}

data "aws_ec2_instance_type" "server" {
  instance_type = var.instance_type
}

resource "aws_key_pair" "admin" {
  count = var.admin_ssh_public_key == null ? 0 : 1

  key_name_prefix = "${var.name}-admin-"
  public_key      = var.admin_ssh_public_key
}

resource "aws_instance" "server" {
  ami                         = local.ami_id
  instance_type               = var.instance_type
  subnet_id                   = data.aws_subnet.server.id
  vpc_security_group_ids      = [aws_security_group.server.id]
  iam_instance_profile        = aws_iam_instance_profile.server.name
  key_name                    = var.admin_ssh_public_key == null ? null : aws_key_pair.admin[0].key_name
  associate_public_ip_address = true # to fetch packages before the Elastic IP is associated

  # A change (new binary, new flags, rotated IoT certificate) replaces the instance; the state
  # volume and the Elastic IP move to the new one.
  user_data_replace_on_change = true
  user_data = templatefile("${path.module}/user_data.sh.tftpl", {
    region             = data.aws_region.current.name
    state_dir          = local.state_dir
    state_volume_id    = local.state_volume_id
    switchboard_url    = var.switchboard_url != null ? var.switchboard_url : ""
    switchboard_sha256 = var.switchboard_sha256 != null ? var.switchboard_sha256 : ""
    switchboard_s3_uri = var.switchboard_s3_uri != null ? var.switchboard_s3_uri : ""
    server_unit        = file("${path.module}/../../systemd/switchboard-server.service")
    exec_start         = local.exec_start
    bind_privileged    = var.ssh_port < 1024
    ssm_enabled        = var.ssm_enabled
    iot_enabled        = var.iot_enabled
    iot_dir            = local.iot_dir
    iot_cert_parameter = var.iot_enabled ? aws_ssm_parameter.iot_server_cert[0].name : ""
    iot_key_parameter  = var.iot_enabled ? aws_ssm_parameter.iot_server_key[0].name : ""
    iot_cert_id        = var.iot_enabled ? aws_iot_certificate.server[0].id : ""
    amazon_root_ca     = var.iot_enabled ? file("${path.module}/AmazonRootCA1.pem") : ""
    known_hosts_host   = local.known_hosts_host
  })

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  root_block_device {
    volume_type           = "gp3"
    volume_size           = var.root_volume_size
    encrypted             = true
    delete_on_termination = true
  }

  tags = {
    Name = "${var.name}-server"
  }

  # The user data reads the S3 object and the SSM parameters as soon as it starts.
  depends_on = [aws_iam_role_policy.server, aws_iam_role_policy_attachment.ssm]

  lifecycle {
    # A newer AMI must not replace the server behind your back: `terraform apply
    # -replace=aws_instance.server` when you want it.
    ignore_changes = [ami]

    precondition {
      condition     = (var.switchboard_url != null) != (var.switchboard_s3_uri != null)
      error_message = "Set exactly one of switchboard_url (with switchboard_sha256) and switchboard_s3_uri."
    }
    precondition {
      condition     = var.switchboard_url == null || var.switchboard_sha256 != null
      error_message = "The switchboard_url needs switchboard_sha256: the binary is checked before it is installed."
    }
    precondition {
      condition     = !(var.embedded_broker && var.iot_enabled)
      error_message = "The embedded_broker and iot_enabled are mutually exclusive: the server talks to one broker."
    }
    precondition {
      condition     = var.iot_enabled || (length(var.devices) == 0 && length(var.device_csrs) == 0)
      error_message = "The devices and device_csrs are for AWS IoT: set iot_enabled = true, or leave them empty."
    }
    precondition {
      condition     = length(setsubtract(keys(var.device_csrs), var.devices)) == 0
      error_message = "Every key of device_csrs must also be in devices."
    }
    precondition {
      condition     = var.ssh_port != 22 || var.admin_cidr == null
      error_message = "The ssh_port 22 is taken by the OS's sshd when admin_cidr is set: pick another ssh_port or close admin SSH."
    }
    precondition {
      condition     = !var.embedded_broker || var.ssh_port != local.mqtt_port
      error_message = "The ssh_port may not be 8883 when the embedded broker listens there."
    }
    precondition {
      condition     = contains(data.aws_ec2_instance_type.server.supported_architectures, var.architecture)
      error_message = "The instance_type does not run the chosen architecture (arm64 needs a Graviton type such as t4g, m7g; x86_64 a type such as t3, m7i)."
    }
    precondition {
      condition     = var.existing_state_volume_id == null || one(data.aws_ebs_volume.existing[*].availability_zone) == data.aws_subnet.server.availability_zone
      error_message = "The existing_state_volume_id is in another availability zone than the server's subnet: an EBS volume attaches only within its zone."
    }
  }
}

# ---------------------------------------------------------------------------------------------
# Instance role: only what the user data needs, plus SSM Session Manager if asked for.
# ---------------------------------------------------------------------------------------------

resource "aws_iam_role" "server" {
  name_prefix = "${var.name}-server-"
  description = "switchboard server instance"
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Action    = "sts:AssumeRole"
      Principal = { Service = "ec2.${data.aws_partition.current.dns_suffix}" }
    }]
  })
}

resource "aws_iam_role_policy" "server" {
  count = length(local.server_role_statements) > 0 ? 1 : 0

  name_prefix = "${var.name}-server-"
  role        = aws_iam_role.server.id
  policy = jsonencode({
    Version   = "2012-10-17"
    Statement = local.server_role_statements
  })
}

resource "aws_iam_role_policy_attachment" "ssm" {
  count = var.ssm_enabled ? 1 : 0

  role       = aws_iam_role.server.name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/AmazonSSMManagedInstanceCore"
}

resource "aws_iam_instance_profile" "server" {
  name_prefix = "${var.name}-server-"
  role        = aws_iam_role.server.name
}

# ---------------------------------------------------------------------------------------------
# State volume: /var/lib/switchboard (host key, authorized_keys, last-seen.json, public-addr,
# the embedded broker's CA). It outlives the instance, so a replaced server keeps its host key
# and every device's pinned known_hosts line stays valid.
#
# prevent_destroy cannot take a variable, so there are two resources and count picks one;
# README.md says how to move the volume between them.
# ---------------------------------------------------------------------------------------------

data "aws_ebs_volume" "existing" {
  count = var.existing_state_volume_id == null ? 0 : 1

  filter {
    name   = "volume-id"
    values = [var.existing_state_volume_id]
  }
}

resource "aws_ebs_volume" "state_protected" {
  count = var.existing_state_volume_id == null && var.state_volume_prevent_destroy ? 1 : 0

  availability_zone = data.aws_subnet.server.availability_zone
  size              = var.state_volume_size
  type              = var.state_volume_type
  encrypted         = true
  final_snapshot    = true

  tags = {
    Name = "${var.name}-state"
  }

  lifecycle {
    prevent_destroy = true
  }
}

resource "aws_ebs_volume" "state" {
  count = var.existing_state_volume_id == null && !var.state_volume_prevent_destroy ? 1 : 0

  availability_zone = data.aws_subnet.server.availability_zone
  size              = var.state_volume_size
  type              = var.state_volume_type
  encrypted         = true
  final_snapshot    = true # even an intended destroy leaves a snapshot of the host key

  tags = {
    Name = "${var.name}-state"
  }
}

resource "aws_volume_attachment" "state" {
  device_name = "/dev/sdf"
  volume_id   = local.state_volume_id
  instance_id = aws_instance.server.id

  # Stop the server before detaching, so the file system is unmounted cleanly.
  stop_instance_before_detaching = true
}
