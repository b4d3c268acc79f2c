# Where the server lives and what may reach it.

data "aws_availability_zones" "available" {
  state = "available"

  filter {
    name   = "opt-in-status"
    values = ["opt-in-not-required"]
  }
}

locals {
  # A reused state volume pins the zone; then the requested zone; then the region's first.
  wanted_az = coalesce(one(data.aws_ebs_volume.existing[*].availability_zone), var.availability_zone, data.aws_availability_zones.available.names[0])
}

# The given subnet, or the default VPC's default subnet in wanted_az.
data "aws_subnet" "server" {
  id                = var.subnet_id
  default_for_az    = var.subnet_id == null ? true : null
  availability_zone = var.subnet_id == null ? local.wanted_az : null
}

resource "aws_security_group" "server" {
  name_prefix = "${var.name}-server-"
  description = "switchboard server" # fixed: a new description would replace the group
  vpc_id      = data.aws_subnet.server.vpc_id

  tags = {
    Name = "${var.name}-server"
  }

  lifecycle {
    create_before_destroy = true
  }
}

# switchboard's own SSH port: devices and operators.
resource "aws_vpc_security_group_ingress_rule" "switchboard_ssh" {
  for_each = toset(var.allowed_cidrs)

  security_group_id = aws_security_group.server.id
  description       = "switchboard SSH"
  ip_protocol       = "tcp"
  from_port         = var.ssh_port
  to_port           = var.ssh_port
  cidr_ipv4         = strcontains(each.value, ":") ? null : each.value
  cidr_ipv6         = strcontains(each.value, ":") ? each.value : null
}

# The embedded MQTT broker, for on-demand devices; closed when AWS IoT (or nothing) is the broker.
resource "aws_vpc_security_group_ingress_rule" "mqtt" {
  for_each = var.embedded_broker ? toset(var.allowed_cidrs) : toset([])

  security_group_id = aws_security_group.server.id
  description       = "switchboard embedded MQTT broker"
  ip_protocol       = "tcp"
  from_port         = local.mqtt_port
  to_port           = local.mqtt_port
  cidr_ipv4         = strcontains(each.value, ":") ? null : each.value
  cidr_ipv6         = strcontains(each.value, ":") ? each.value : null
}

# The OS's sshd, for administration; closed unless admin_cidr is set.
resource "aws_vpc_security_group_ingress_rule" "admin_ssh" {
  count = var.admin_cidr == null ? 0 : 1

  security_group_id = aws_security_group.server.id
  description       = "admin SSH (OS sshd)"
  ip_protocol       = "tcp"
  from_port         = 22
  to_port           = 22
  cidr_ipv4         = strcontains(var.admin_cidr, ":") ? null : var.admin_cidr
  cidr_ipv6         = strcontains(var.admin_cidr, ":") ? var.admin_cidr : null
}

# Outbound: packages, the binary, SSM, AWS IoT Core.
resource "aws_vpc_security_group_egress_rule" "all_ipv4" {
  security_group_id = aws_security_group.server.id
  description       = "all outbound IPv4"
  ip_protocol       = "-1"
  cidr_ipv4         = "0.0.0.0/0"
}

resource "aws_vpc_security_group_egress_rule" "all_ipv6" {
  security_group_id = aws_security_group.server.id
  description       = "all outbound IPv6"
  ip_protocol       = "-1"
  cidr_ipv6         = "::/0"
}

# The address devices pin (their known_hosts line names it). Reuse one kept from an earlier
# deployment with existing_eip_allocation_id.
resource "aws_eip" "server" {
  count = var.existing_eip_allocation_id == null ? 1 : 0

  domain = "vpc"

  tags = {
    Name = "${var.name}-server"
  }
}

data "aws_eip" "existing" {
  count = var.existing_eip_allocation_id == null ? 0 : 1

  id = var.existing_eip_allocation_id
}

resource "aws_eip_association" "server" {
  allocation_id = local.eip_allocation_id
  instance_id   = aws_instance.server.id
}
