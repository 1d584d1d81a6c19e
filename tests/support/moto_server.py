"""moto's server, as `moto_server` runs it, with the fixes the tests need.

moto 5.2.1 does not work out a stack's outputs again when a change set is
executed (`FakeChangeSet.apply` updates the resources only), so a stack made
or changed through a change set has no outputs, unlike on AWS. `taskflow
deploy` always goes through a change set, so the tests start moto through
this file: after every executed change set, the stack's template is read
again, its outputs are worked out and its parameters become the change
set's, as `update_stack` does.

moto also finishes every stack operation before answering the call that
starts it, so nothing is ever under way for `taskflow deploy --wait` to
follow or for Ctrl-C to interrupt. A stack whose name ends in `-slow` is
therefore reported `..._IN_PROGRESS` for SLOW_SECONDS after a change set of
it is executed, then as moto left it. Other stacks are as moto makes them.

The rest lets the full Fargate stack (cloudformation/taskflow-infrastructure.yaml)
be created, updated and deleted, closing these gaps (moto 5.2.1 vs AWS):

- `!GetAtt A.B.C` and Fn::Sub's `${A.B.C}`: moto splits the attribute at
  every dot (asking for `Endpoint` of `Endpoint.Address`); AWS takes all
  after the first dot as the attribute.
- `Ref` of an AWS::RDS::DBParameterGroup: moto gives the model object (a 500
  when a DBInstance names it); AWS gives the group's name.
- AWS::RDS::DBInstance: moto ignores ManageMasterUserPassword,
  DeletionProtection and VPCSecurityGroups, gives every engine port 3306 and
  knows no `MasterUserSecret.SecretArn`; AWS makes the RDS-managed secret
  (here with moto's own `MasterUserSecret`), honours the others and uses the
  engine's port (5432).
- Updating a DBInstance: moto has no update (the stack's instance becomes
  None); AWS modifies it in place (e.g. DeletionProtection), as done here for
  the in-place properties; a change that would replace it is refused.
- AWS::ECR::Repository without a name: moto uses the mixed-case generated
  name, which ECR rejects; AWS generates a lower-case one.
- AWS::SecretsManager::Secret: moto skips the type (Ref gives nothing, the
  outputs naming it are missing); AWS creates it: here in moto's Secrets
  Manager, its value given or generated, Ref its ARN.
- Change sets: moto lists a resource without Properties as modified (having
  added `Properties: {}` to the old template), lists nothing a parameter
  change modifies, and counts every parameter not given before as changed;
  AWS lists exactly the resources whose resolved properties change.
- Updates and conditions: moto ignores a condition that a parameter change
  turns (so, e.g., ContainerImage going from "" to an image creates no
  service); AWS creates the resources whose Condition turns true, deletes
  those whose Condition turns false, and updates those with an Fn::If on it.
- Updating an AWS::ECS::TaskDefinition: moto re-registers it with the
  template's key case (ECS then shows no image) and leaves resources naming
  it alone; AWS replaces it (a new revision, the old one deregistered) and,
  like any replacement, updates the resources that name it (the service).
- Deleting a stack: moto has no CloudFormation delete for route tables,
  routes, subnet route table associations, internet gateways and their
  attachments, NAT gateways, Elastic IPs, VPC endpoints, ECS services,
  clusters and task definitions, target groups and managed policies, so
  they stay (and the VPC cannot go); AWS deletes them.
- Moto deletes a stack's resources in any order, retrying what fails (an
  update's removals 5 times at most), and deletes a DBInstance outright; AWS
  deletes what names a resource before it, so that what a failed deletion
  needs stays, and a DeletionPolicy of Snapshot leaves a final snapshot.
- A deletion that fails (e.g. a database with DeletionProtection): moto
  answers DeleteStack with the error and forgets the stack; AWS accepts the
  call and leaves the stack DELETE_FAILED with the reason.

- ValidateTemplate: moto answers with no parameters; AWS lists the
  template's (name, default, NoEcho, description), which `taskflow deploy`
  checks a `--parameter` name against.

Resource types moto does not support (AWS::CloudWatch::Alarm,
AWS::S3::BucketPolicy, AWS::ApplicationAutoScaling::*) are still skipped as
moto skips them: not created, no physical id.

Usage: python3 tests/support/moto_server.py -H 127.0.0.1 -p PORT
"""

import functools
import json
import re
import sys
import time

from moto.cloudformation import models

SLOW_SECONDS = 8

_execute_change_set = models.CloudFormationBackend.execute_change_set


def _execute_change_set_with_outputs(self, change_set_name, stack_name=None):
    change_set = self.change_sets.get(change_set_name) or next(
        (cs for cs in self.change_sets.values()
         if cs.change_set_name == change_set_name
         and stack_name in (None, cs.stack_name, cs.stack_id)),
        None,
    )
    _execute_change_set(self, change_set_name, stack_name)
    if change_set is not None:
        stack = change_set.stack
        if change_set.parameters:
            stack.parameters = change_set.parameters
        stack._parse_template()
        stack.output_map = stack._create_output_map()
        if stack.name.endswith("-slow"):
            stack.__dict__["_done_at"] = time.monotonic() + SLOW_SECONDS


models.CloudFormationBackend.execute_change_set = _execute_change_set_with_outputs


def _status(stack):
    status = stack.__dict__.get("_status")
    done_at = stack.__dict__.get("_done_at")
    if done_at is not None and time.monotonic() < done_at and status.endswith("_COMPLETE"):
        return status[: -len("_COMPLETE")] + "_IN_PROGRESS"
    return status


def _set_status(stack, status):
    stack.__dict__["_status"] = status


models.Stack.status = property(_status, _set_status)


# --- The full Fargate stack (see the docstring).

from moto.cloudformation import parsing  # noqa: E402
from moto.cloudformation import responses as cfn_responses  # noqa: E402
from moto.cloudformation import utils as cfn_utils  # noqa: E402
from moto.core.common_models import CloudFormationModel  # noqa: E402
from moto.ec2 import models as ec2_models  # noqa: E402
from moto.ecr import models as ecr_models  # noqa: E402
from moto.ecs import models as ecs_models  # noqa: E402
from moto.elbv2 import models as elbv2_models  # noqa: E402
from moto.iam import models as iam_models  # noqa: E402
from moto.rds import models as rds_models  # noqa: E402
from moto.secretsmanager.models import secretsmanager_backends  # noqa: E402

# Attributes with dots: !GetAtt A.B.C and ${A.B.C}.
_yaml_tag_constructor = cfn_utils.yaml_tag_constructor


def _yaml_tag_constructor_dotted(loader, tag, node):
    if tag == "!GetAtt" and isinstance(node.value, str):
        return {"Fn::GetAtt": node.value.split(".", 1)}
    return _yaml_tag_constructor(loader, tag, node)


models.yaml_tag_constructor = cfn_responses.yaml_tag_constructor = _yaml_tag_constructor_dotted
_clean_json = parsing.clean_json


def _clean_json_dotted(resource_json, resources_map):
    if isinstance(resource_json, dict) and len(resource_json.get("Fn::GetAtt") or ()) > 2:
        name, *attribute = resource_json["Fn::GetAtt"]  # as Fn::Sub splits ${A.B.C}
        resource_json = {"Fn::GetAtt": [name, ".".join(attribute)]}
    return _clean_json(resource_json, resources_map)


parsing.clean_json = _clean_json_dotted

# Ref of a DBParameterGroup.
rds_models.DBParameterGroup.physical_resource_id = property(lambda group: group.name)

# DBInstance: created with its managed secret, protection, security groups
# and port; MasterUserSecret.SecretArn.
_create_db_instance = rds_models.DBInstance.create_from_cloudformation_json.__func__


def _create_db_instance_cfn(cls, resource_name, cloudformation_json, account_id, region_name, **kwargs):
    properties = dict(cloudformation_json["Properties"])
    properties.setdefault("Port", rds_models.DBInstance.default_port(properties.get("Engine")))
    properties.setdefault("VpcSecurityGroupIds", properties.get("VPCSecurityGroups", []))
    database = _create_db_instance(
        cls, resource_name, {**cloudformation_json, "Properties": properties}, account_id, region_name, **kwargs)
    database.deletion_protection = str(properties.get("DeletionProtection")).lower() == "true"
    if str(properties.get("ManageMasterUserPassword")).lower() == "true":
        database.manage_master_user_password = True
        database.master_user_secret = rds_models.MasterUserSecret(
            database, (properties.get("MasterUserSecret") or {}).get("KmsKeyId"))
    return database


rds_models.DBInstance.create_from_cloudformation_json = classmethod(_create_db_instance_cfn)
_db_has_cfn_attr = rds_models.DBInstance.has_cfn_attr.__func__
rds_models.DBInstance.has_cfn_attr = classmethod(
    lambda cls, attr: attr == "MasterUserSecret.SecretArn" or _db_has_cfn_attr(cls, attr))
_db_get_cfn_attribute = rds_models.DBInstance.get_cfn_attribute


def _db_get_cfn_attribute_secret(database, attribute_name):
    if attribute_name == "MasterUserSecret.SecretArn" and hasattr(database, "master_user_secret"):
        return database.master_user_secret.secret_arn
    return _db_get_cfn_attribute(database, attribute_name)


rds_models.DBInstance.get_cfn_attribute = _db_get_cfn_attribute_secret

# DBInstance: updated in place.
_DB_IN_PLACE = {
    "DeletionProtection": "deletion_protection", "DBInstanceClass": "db_instance_class",
    "AllocatedStorage": "allocated_storage", "MultiAZ": "multi_az", "EngineVersion": "engine_version",
    "BackupRetentionPeriod": "backup_retention_period", "AutoMinorVersionUpgrade": "auto_minor_version_upgrade",
    "DBParameterGroupName": "db_parameter_group_name", "CopyTagsToSnapshot": "copy_tags_to_snapshot",
    "PubliclyAccessible": "publicly_accessible", "StorageType": "storage_type",
    "VPCSecurityGroups": "vpc_security_group_ids",
}


def _update_db_instance_cfn(cls, original_resource, new_resource_name, cloudformation_json, account_id, region_name):
    properties = cloudformation_json["Properties"]
    for key, attribute in {"Engine": "engine", "DBName": "db_name", "MasterUsername": "master_username"}.items():
        if key in properties and properties[key] != getattr(original_resource, attribute):
            raise NotImplementedError(f"replacing DB instance {original_resource.db_instance_identifier} ({key})")
    for key, attribute in _DB_IN_PLACE.items():
        if key in properties:
            value = properties[key]
            if isinstance(value, str) and value.lower() in ("true", "false"):
                value = value.lower() == "true"
            setattr(original_resource, attribute, value)
    return original_resource


rds_models.DBInstance.update_from_cloudformation_json = classmethod(_update_db_instance_cfn)

# ECR repository names in lower case.
_create_repository = ecr_models.Repository.create_from_cloudformation_json.__func__
ecr_models.Repository.create_from_cloudformation_json = classmethod(
    lambda cls, resource_name, *args, **kwargs: _create_repository(cls, resource_name.lower(), *args, **kwargs))


# AWS::SecretsManager::Secret.
class _CfnSecret(CloudFormationModel):
    __module__ = "moto.secretsmanager.models"  # moto files a model under its service's name

    def __init__(self, backend, arn):
        self.backend, self.arn = backend, arn

    physical_resource_id = property(lambda self: self.arn)
    cloudformation_type = staticmethod(lambda: "AWS::SecretsManager::Secret")
    cloudformation_name_type = staticmethod(lambda: "Name")
    has_cfn_attr = classmethod(lambda cls, attr: attr == "Id")
    get_cfn_attribute = lambda self, attr: self.arn  # noqa: E731

    @classmethod
    def create_from_cloudformation_json(cls, resource_name, cloudformation_json, account_id, region_name, **kwargs):
        properties = cloudformation_json["Properties"]
        backend = secretsmanager_backends[account_id][region_name]
        value = properties.get("SecretString")
        if value is None:
            generate = properties.get("GenerateSecretString") or {}
            flag = lambda key, default=False: str(generate.get(key, default)).lower() == "true"  # noqa: E731
            value = json.loads(backend.get_random_password(
                int(generate.get("PasswordLength", 32)), generate.get("ExcludeCharacters", ""),
                flag("ExcludeNumbers"), flag("ExcludePunctuation"), flag("ExcludeUppercase"),
                flag("ExcludeLowercase"), flag("IncludeSpace"), flag("RequireEachIncludedType", True),
            ))["RandomPassword"]
            if generate.get("GenerateStringKey"):
                value = json.dumps(
                    {**json.loads(generate["SecretStringTemplate"]), generate["GenerateStringKey"]: value})
        created = json.loads(backend.create_secret(
            resource_name, value, None, properties.get("Description"), properties.get("Tags"),
            properties.get("KmsKeyId"), None, [], False))
        return cls(backend, created["ARN"])

    def delete(self, account_id, region_name):
        self.backend.delete_secret(self.arn, None, True)


# Change sets and updates: what changed, parameters and conditions included.
def _conditions(resource_map, template, parameters):
    values = {key: value for key, value in resource_map._parsed_resources.items() if key.startswith("AWS::")}
    values.update({name: slot.get("Default") for name, slot in (template.get("Parameters") or {}).items()})
    values.update(parameters)
    lazy = parsing.LazyDict()
    for name, condition in (template.get("Conditions") or {}).items():
        lazy[name] = functools.partial(parsing.parse_condition, condition, values, lazy)
    return {name: lazy[name] for name in list(lazy)}


def _if_conditions(node):
    if isinstance(node, dict):
        if isinstance(node.get("Fn::If"), list):
            yield node["Fn::If"][0]
        for value in node.values():
            yield from _if_conditions(value)
    elif isinstance(node, list):
        for item in node:
            yield from _if_conditions(item)


_build_resource_diff = parsing.ResourceMap.build_resource_diff


def _build_resource_diff_full(resource_map, other_template, parameters=None):
    old_resources = resource_map._resource_json_map
    for name, resource in other_template.get("Resources", {}).items():
        if "Properties" not in resource and old_resources.get(name, {}).get("Properties") == {}:
            resource["Properties"] = {}
    if parameters is not None:  # moto counts a parameter as changed when it was not given before
        slots = other_template.get("Parameters") or {}
        changed_parameters = {
            name: parameters.get(name, slot.get("Default")) for name, slot in slots.items()
            if str(parameters.get(name, slot.get("Default"))) != str(resource_map.resolved_parameters.get(name))}
    diff = _build_resource_diff(resource_map, other_template, None if parameters is None else changed_parameters)
    old = getattr(resource_map, "lazy_condition_map", None)
    if parameters is None or old is None:
        return diff
    new = _conditions(resource_map, other_template, parameters)
    changed = {name for name in new if name in old and new[name] != old[name]}
    modified = set(diff["Modify"])
    for name, resource in other_template.get("Resources", {}).items():
        if name not in old_resources:
            continue  # new to the template: moto's Add
        for names in diff.values():
            if name in names:
                names.remove(name)
        condition = resource.get("Condition")
        if condition in changed:
            diff["Add" if new[condition] else "Remove"].append(name)
        elif new.get(condition, True) and (
                name in modified or changed & set(_if_conditions(resource.get("Properties")))):
            diff["Modify"].append(name)
    return diff


parsing.ResourceMap.build_resource_diff = _build_resource_diff_full
_change_set_diff = models.ChangeSet.diff


def _change_set_diff_with_parameters(change_set):
    resource_map = change_set.stack.resource_map
    resource_map.build_resource_diff = lambda template, parameters=None: _build_resource_diff_full(
        resource_map, template, change_set.parameters)
    try:
        return _change_set_diff(change_set)
    finally:
        del resource_map.build_resource_diff


models.ChangeSet.diff = _change_set_diff_with_parameters


# ECS task definitions replaced; what names a replaced resource updated.
def _replace_task_definition(cls, original_resource, new_resource_name, cloudformation_json, account_id, region_name):
    new = cls.create_from_cloudformation_json(new_resource_name, cloudformation_json, account_id, region_name)
    ecs_models.ecs_backends[account_id][region_name].deregister_task_definition(original_resource.arn)
    return new


ecs_models.TaskDefinition.update_from_cloudformation_json = classmethod(_replace_task_definition)


def _names(node):
    """The resources (and parameters) a piece of template names."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "Ref" and isinstance(value, str):
                yield value
            elif key == "Fn::GetAtt":
                yield value.split(".")[0] if isinstance(value, str) else value[0]
            elif key == "Fn::Sub":
                text = value[0] if isinstance(value, list) else value
                yield from re.findall(r"\$\{([^!.}][^.}]*)", text if isinstance(text, str) else "")
            if key != "Ref":
                yield from _names(value)
    elif isinstance(node, list):
        for item in node:
            yield from _names(item)


def _physical_ids(resource_map):
    return {name: getattr(resource, "physical_resource_id", None)
            for name, resource in resource_map._parsed_resources.items()
            if name in resource_map._resource_json_map and resource is not None}


_resource_map_update = parsing.ResourceMap.update


def _update_with_dependents(resource_map, template, parameters=None):
    before = _physical_ids(resource_map)
    removed = resource_map.build_resource_diff(template, parameters)["Remove"]
    _resource_map_update(resource_map, template, parameters)
    for name in removed:  # deleted, but moto keeps them as if still there
        resource_map._parsed_resources.pop(name, None)
    after = _physical_ids(resource_map)
    replaced = {name for name in before if name in after and after[name] != before[name]}
    while replaced:
        updated = set()
        for name, resource_json in resource_map._resource_json_map.items():
            if name in after and replaced & set(_names(resource_json.get("Properties", {}))):
                changed = parsing.parse_and_update_resource(
                    name, resource_json, resource_map, resource_map._account_id, resource_map._region_name)
                if changed is not None:
                    resource_map._parsed_resources[name] = changed
                    if getattr(changed, "physical_resource_id", None) != after[name]:
                        updated.add(name)
        after = _physical_ids(resource_map)
        replaced = updated


parsing.ResourceMap.update = _update_with_dependents


# Deletion of the types moto leaves.
def _ec2(account_id, region_name):
    return ec2_models.ec2_backends[account_id][region_name]


def _ecs(account_id, region_name):
    return ecs_models.ecs_backends[account_id][region_name]


def _detach_gateway(attachment, account_id, region_name):
    if not (attachment.gateway_id or "").startswith("igw-"):
        raise AttributeError("a VPN gateway: left to moto")
    _ec2(account_id, region_name).detach_internet_gateway(attachment.gateway_id, attachment.vpc_id)


def _delete_nat_gateway(gateway, account_id, region_name):
    _ec2(account_id, region_name).delete_nat_gateway(gateway.id)
    _ec2(account_id, region_name).enis.pop(gateway._eni.id, None)  # its network interface goes with it


ec2_models.route_tables.RouteTable.delete = lambda table, a, r: _ec2(a, r).delete_route_table(table.id)
ec2_models.route_tables.Route.delete = lambda route, a, r: _ec2(a, r).delete_route(
    route.route_table.id, route.destination_cidr_block)
ec2_models.subnets.SubnetRouteTableAssociation.delete = lambda association, a, r: _ec2(a, r).subnet_associations.pop(
    f"{association.route_table_id}:{association.subnet_id}", None)
ec2_models.internet_gateways.InternetGateway.delete = lambda gateway, a, r: _ec2(a, r).delete_internet_gateway(
    gateway.id)
ec2_models.vpn_gateway.VPCGatewayAttachment.delete = _detach_gateway
ec2_models.nat_gateways.NatGateway.delete = _delete_nat_gateway
ec2_models.elastic_ip_addresses.ElasticAddress.delete = lambda address, a, r: _ec2(a, r).release_address(
    address=address.public_ip)
ec2_models.vpcs.VPCEndPoint.delete = lambda endpoint, a, r: _ec2(a, r).delete_vpc_endpoints([endpoint.id])
ecs_models.Service.delete = lambda service, a, r: _ecs(a, r).delete_service(service.cluster_name, service.name, True)
ecs_models.Cluster.delete = lambda cluster, a, r: _ecs(a, r).delete_cluster(cluster.arn)
ecs_models.TaskDefinition.delete = lambda definition, a, r: _ecs(a, r).deregister_task_definition(definition.arn)
elbv2_models.FakeTargetGroup.delete = lambda group, a, r: elbv2_models.elbv2_backends[a][r].delete_target_group(
    group.arn)
iam_models.ManagedPolicy.delete = lambda policy, a, r: policy.backend.delete_policy(policy.arn)


# Deletion in dependency order; DeletionPolicy Snapshot; DELETE_FAILED.
class _StillNamed(Exception):
    pass


_delete_resource = parsing.ResourceMap._delete_resource


def _depends_on(resource_json):
    depends_on = resource_json.get("DependsOn") or []
    return [depends_on] if isinstance(depends_on, str) else depends_on


def _delete_resource_in_order(resource_map, resource, resource_json):
    name = getattr(resource, "logical_resource_id", None)
    gone = resource_map.__dict__.setdefault("_gone", [])
    users = [other for other, other_json in resource_map._resource_json_map.items()
             if other != name and other_json.get("DeletionPolicy") != "Retain"
             and resource_map._parsed_resources.get(other) is not None
             and not any(resource_map._parsed_resources[other] is done for done in gone)
             and (name in _names(other_json) or name in _depends_on(other_json))]
    if users:
        raise _StillNamed(f"{name} is still named by {', '.join(sorted(users))}")
    try:
        if resource_json.get("DeletionPolicy") == "Snapshot" and isinstance(resource, rds_models.DBInstance):
            resource.backend.delete_db_instance(
                resource.db_instance_identifier, f"{resource.db_instance_identifier}-final-snapshot")
        else:
            _delete_resource(resource_map, resource, resource_json)
    except Exception as error:
        resource_map.__dict__["_delete_error"] = f"{name}: {error}"
        raise
    gone.append(resource)


parsing.ResourceMap._delete_resource = _delete_resource_in_order
parsing.MAX_UPDATE_ATTEMPTS = 100  # passes over an update's removals: as many as the dependencies need
_delete_stack = models.CloudFormationBackend.delete_stack


def _delete_stack_or_fail(backend, name_or_stack_id):
    stacks = dict(backend.stacks)
    for stack in stacks.values():
        stack.resource_map.__dict__.pop("_delete_error", None)
    try:
        _delete_stack(backend, name_or_stack_id)
    except Exception as error:  # noqa: BLE001  (whatever a resource's deletion raised)
        for stack_id, stack in stacks.items():
            if stack_id not in backend.stacks and stack_id not in backend.deleted_stacks:
                backend.stacks[stack_id] = stack
                stack.status = "DELETE_FAILED"
                reason = stack.resource_map.__dict__.get("_delete_error", str(error))
                stack._add_stack_event("DELETE_FAILED", resource_status_reason=reason)


models.CloudFormationBackend.delete_stack = _delete_stack_or_fail

# ValidateTemplate lists the template's parameters.
_validate_template = cfn_responses.CloudFormationResponse.validate_template


def _validate_template_with_parameters(response):
    answer = _validate_template(response)
    body = response._get_param("TemplateBody")
    try:
        template = models.yaml.load(body, Loader=models.yaml.Loader) if body else {}
    except Exception:  # noqa: BLE001  (moto's own check above accepted it; JSON or not, no parameters then)
        template = {}
    slots = template.get("Parameters") if isinstance(template, dict) else None
    answer.result["Parameters"] = [
        {key: value for key, value in {
            "ParameterKey": name,
            "DefaultValue": None if slot.get("Default") is None else str(slot.get("Default")),
            "NoEcho": str(slot.get("NoEcho", False)).lower() == "true",
            "Description": slot.get("Description"),
        }.items() if value is not None}
        for name, slot in (slots or {}).items() if isinstance(slot, dict)
    ]
    return answer


cfn_responses.CloudFormationResponse.validate_template = _validate_template_with_parameters

from moto.server import main  # noqa: E402  (after the fixes)

if __name__ == "__main__":
    sys.exit(main())
